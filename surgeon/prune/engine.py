"""`surgeon prune`: calibration capture, head importance, selection, o_proj heal and a
mask-mode write, one decoder layer at a time.

For each layer i: run the layer on the calibration stream with a hook accumulating
G = X^T X of o_proj's input, score the heads, pick the ones to remove, heal o_proj from G,
zero the removed heads' o_proj columns and q_proj rows, then run the pruned layer to make
the stream layer i+1 will see (or keep the base layer's output with --propagate base).
That is two layer passes per pruned layer and one per untouched layer.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import torch

from surgeon import __version__
from surgeon.atomic import output_errors, write_text_atomic
from surgeon.errors import SurgeonError
from surgeon.format.checkpoint import Checkpoint, open_checkpoint, source_record
from surgeon.format.hashcache import hash_cache_dir
from surgeon.format.manifest import SCHEMA, PruneManifest, created_now, manifest_json, tool_record, written_record
from surgeon.format.safetensors import TensorInfo
from surgeon.format.writer import (
    COPY_CHUNK,
    MANIFEST_NAME,
    SIDE_FILE_MAX,
    WriteReport,
    check_loadable_base,
    check_output_folder,
    check_output_path,
    side_file_root,
    write_checkpoint,
)
from surgeon.jsonfile import open_regular
from surgeon.model.families import LayerSpec, MlpSpec, ModelLayout, model_layout
from surgeon.model.geometry import geometry_by_layer
from surgeon.model.names import parse_layers
from surgeon.options import record
from surgeon.parallel import check_stop
from surgeon.progress import NoProgress, ProgressSink
from surgeon.prune.ffn import FfnInput, channels_to_prune, heal_down
from surgeon.prune.ffn import choose as choose_channels
from surgeon.prune.heads import HeadCount, head_counts, rounding_warning
from surgeon.prune.heal import HEALERS, HealInput, head_columns
from surgeon.prune.importance import SCORERS, ScoringInput, check_gram, select_balanced, select_heads
from surgeon.prune.options import PruneOptions
from surgeon.prune.workdir import DamagedEntry, Workdir, check_workdir, record_problem
from surgeon.runtime.corpus import (
    MIN_TOKENS_PER_WIDTH,
    auto_token_budget,
    corpus_sha256,
    encode,
    load_corpus,
    load_dataset_corpus,
)
from surgeon.runtime.device import resolve_run
from surgeon.runtime.memory import return_freed_memory
from surgeon.runtime.stream import Batch, LayerStream, make_batches
from surgeon.runtime.threads import use_cpu_threads
from surgeon.runtime.tokenizer import load_tokenizer, tokenizer_error


@dataclass
class LayerResult:
    layer: int
    layer_type: str | None
    num_heads: int
    num_kv_heads: int
    head_dim: int
    pruned: bool  # False: the layer was only run to feed the next one
    pruned_heads: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    refit: dict | None = None
    tokens: int = 0
    seconds: float = 0.0
    ffn_width: int = 0  # MLP channels where the layer's FFN is pruned (--ffn-frac), else 0
    ffn_pruned_channels: list[int] = field(default_factory=list)
    ffn_refit: dict | None = None
    ffn_bias: str | None = None  # refit, compensated (heal none) or absent: what took the removed channels' mean


@dataclass
class PruneResult:
    output: Path
    layers: list[LayerResult]
    manifest: dict
    forward_calls: int
    resumed_at: int
    head_counts: list[HeadCount] = field(default_factory=list)  # the heads each pruned layer lost
    reshape_line: str | None = None  # --mode reshape: what the slicing removed and saved, in words


class _Gram:
    """Accumulates G = X^T X and the column sums of a linear layer's input (o_proj's, or
    down_proj's for the FFN) over real (unpadded) tokens. float32 above 2048 columns: a
    21504-wide MLP's G is 1.85 GB so, 3.7 GB in float64; the solves are float64 anyway."""

    def __init__(self, width: int, device: torch.device):
        self.dtype = torch.float64 if width <= 2048 else torch.float32
        self.matrix = torch.zeros(width, width, dtype=self.dtype, device=device)
        self.sums = torch.zeros(width, dtype=torch.float64, device=device)
        self.tokens = 0
        self.mask: torch.Tensor | None = None

    def hook(self, module, args) -> None:
        x = args[0]
        rows = x[self.mask.to(x.device)] if self.mask is not None else x.reshape(-1, x.shape[-1])
        rows = rows.to(self.dtype)
        self.matrix.addmm_(rows.T, rows)
        self.sums += rows.sum(dim=0, dtype=torch.float64)
        self.tokens += rows.shape[0]


def prune(
    base: str | Path | Checkpoint,
    output: Path,
    options: PruneOptions = PruneOptions(),
    *,
    workdir: Path | None = None,
    force: bool = False,
    progress: ProgressSink | None = None,
    cancel: threading.Event | None = None,
    on_layer_done: LayerDone | None = None,
    durable: bool = False,
    on_phase: PhaseStarted | None = None,
    on_warning: Warned | None = None,
) -> PruneResult:
    """Prune `base` into `output`. `on_phase(layer, phase)` is called as each layer enters a
    phase and `on_layer_done(result)` after each layer (the TUI follows along with them;
    tests use the latter to kill a run midway); `on_warning(message)` as a warning arises."""
    options.validate()
    return_freed_memory()
    progress = progress or NoProgress()
    ckpt = base if isinstance(base, Checkpoint) else open_checkpoint(base)
    layout = model_layout(ckpt)
    selected = parse_layers(options.layers, len(layout.layers), what="layers")

    target = check_output_folder(Path(output), [ckpt], force)
    check_loadable_base(ckpt)  # before the layers are pruned, not at the write
    if options.ffn_frac:
        check_ffn(layout, selected, options)
    balanced = reshape_plan(ckpt, layout, selected, options) if options.mode == "reshape" else None
    balanced = balanced or None  # a reshape of MLP channels alone: no head plan
    if workdir is not None:  # it is written to, and its files are deleted when the inputs change
        check_output_path(Path(workdir), [ckpt], force=True)
        check_workdir(Path(workdir), target, [ckpt])
    run = _Run(
        ckpt,
        layout,
        options,
        selected,
        progress,
        cancel,
        durable=durable,
        on_layer_done=on_layer_done,
        on_phase=on_phase,
        on_warning=on_warning,
        balanced=balanced,
    )
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="surgeon-prune-") as scratch:
            return run.execute(Path(scratch), Path(output), force)
    return run.execute(Path(workdir), Path(output), force)


class LayerDone(Protocol):
    """Hears each layer's result as the layer is done."""

    def __call__(self, result: LayerResult, /) -> None: ...


class PhaseStarted(Protocol):
    """Hears a layer enter a phase ("capture", "heal", ...)."""

    def __call__(self, layer: int, phase: str, /) -> None: ...


class Warned(Protocol):
    """Hears a warning as it arises (the manifest's messages record it too)."""

    def __call__(self, message: str, /) -> None: ...


class _Run:
    def __init__(
        self,
        ckpt: Checkpoint,
        layout: ModelLayout,
        options: PruneOptions,
        selected: list[int],
        progress: ProgressSink,
        cancel: threading.Event | None,
        *,
        durable: bool = False,
        on_layer_done: LayerDone | None = None,
        on_phase: PhaseStarted | None = None,
        on_warning: Warned | None = None,
        balanced: dict[int, tuple[int, int]] | None = None,
    ):
        self.ckpt, self.layout, self.options = ckpt, layout, options
        self.selected = set(selected)
        self.fracs = dict(options.layer_fracs)
        self.balanced = balanced  # reshape: per layer, the KV groups kept and the query heads each keeps
        self.head_counts = head_counts(layout.layers, selected, options.prune_frac, options.layer_fracs)
        if balanced is not None:  # solved exactly: whole KV groups may go, past heads_to_prune's cap
            self.head_counts = _reshape_counts(layout.layers, balanced, options.prune_frac)
        self.progress, self.cancel, self.durable = progress, cancel, durable
        self.on_layer_done, self.on_phase, self.on_warning = on_layer_done, on_phase, on_warning
        self.device, self.dtype = resolve_run(options.run)
        use_cpu_threads(self.device, layout.config.get("hidden_size"))
        self.timings: dict[str, float] = {}
        self.messages: list[str] = []
        self.calibration: dict[str, Any] = {}  # what _calibration read, for the manifest

    def should_stop(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()

    def _time(self, phase: str, started: float) -> None:
        self.timings[phase] = self.timings.get(phase, 0.0) + time.perf_counter() - started

    def execute(self, workdir_path: Path, output: Path, force: bool) -> PruneResult:
        started = time.perf_counter()
        rounded = rounding_warning(self.head_counts)
        if rounded:  # before minutes of work, not after them
            self._warn(rounded)
        # seconds to minutes before the first layer (tokenizer, corpus, transformers, the
        # model's skeleton and embeddings): a step of its own, not silence
        self.progress.start("loading tokenizer, calibration text and model", 1, unit="step")
        try:
            tokenizer_path = self.options.run.tokenizer_dir(self.ckpt.root)
            sequences, pad_id = self._calibration(tokenizer_path)
            workdir = Workdir(workdir_path, self._fingerprint(tokenizer_path))
            message = workdir.open()
            if message:  # earlier work discarded: said as it happens, and recorded with the folder's name only
                self._warn(message.replace(str(workdir_path), _shown_name(workdir_path), 1))
            if self.ckpt.note:  # the base is read as transformers loads it, not through its index
                self._warn(self.ckpt.note)
            stream = LayerStream(self.ckpt, self.layout, self.device, self.dtype)
            batches = make_batches(sequences, self.options.batch_size, pad_id)
            self.progress.advance(1)
        finally:
            self.progress.stop()
        self._time("load", started)
        results, start = self._resume(workdir, stream, batches)
        # Layers after the last pruned one are never run: nothing downstream reads their
        # stream (layers 0-3 of SmolLM2-135M: 34 layer passes became 8).
        last = max(self.selected, default=-1)
        for spec in self.layout.layers[start : last + 1]:
            check_stop(self.should_stop)
            result, tensors = self._layer(stream, spec, batches)
            workdir.save_layer(spec.index, asdict(result), tensors)
            workdir.save_stream(spec.index + 1, [self._keep(cast(torch.Tensor, b.hidden)) for b in batches])
            results.append(result)
            del tensors
            if self.on_layer_done is not None:
                self.on_layer_done(result)
        passes = {"forward_calls": stream.forward_calls, "layer_passes": stream.forward_calls // len(batches)}
        reshape_line = None
        if self.options.mode == "reshape":
            manifest, reshape_line = self._reshaped(workdir, results, output, force, passes, start, started)
        else:
            manifest = self._write(workdir, results, output, force, passes, start)
            manifest["timings"] = dict(self.timings, total=time.perf_counter() - started)
            with output_errors(output):
                write_text_atomic(output / MANIFEST_NAME, manifest_json(manifest))
        return PruneResult(output, results, manifest, stream.forward_calls, start, self.head_counts, reshape_line)

    def _reshaped(self, workdir: Workdir, results, output: Path, force: bool, passes, start, started):
        """The mask-mode checkpoint written beside `output` (on its disk: a copy of the model,
        which a /tmp workdir may not hold), its heads sliced out into `output`, then removed."""
        from surgeon.prune.reshape import mask_build_beside

        with mask_build_beside(output) as masked:
            manifest = self._write(workdir, results, masked, False, passes, start)
            manifest["timings"] = dict(self.timings, total=time.perf_counter() - started)
            with output_errors(masked):
                write_text_atomic(masked / MANIFEST_NAME, manifest_json(manifest))
            from surgeon.prune.reshape import reshape, summary
            from surgeon.prune.reshape_check import transformers_problem

            check_stop(self.should_stop)
            done = reshape(masked, output, force=force, config_problem=transformers_problem, cancel=self.cancel)
            return done.manifest, summary(done)

    def _calibration(self, tokenizer_path: Path) -> tuple[list[list[int]], int]:
        """Token ids of the calibration corpus (samples of max_tokens, one BOS each, up to
        the token budget) and the pad id; records what was used for the manifest and warns
        when the tokens are too few for the layers' width."""
        tokenizer = load_tokenizer(tokenizer_path)
        pruned = [spec for spec in self.layout.layers if spec.index in self.selected] or self.layout.layers
        width = max(map(self._width, pruned))
        budget = self.options.calib_tokens or auto_token_budget(width)
        if self.options.calib_dataset is not None:
            # ~4 characters a token in English; 16 leaves room for any tokenizer
            texts, record = load_dataset_corpus(self.options.calib_dataset, max_chars=16 * budget)
        else:
            texts, record = load_corpus(self.options.calib)
        if self.options.calib_samples:
            texts = texts[: self.options.calib_samples]
        sequences = encode(tokenizer, texts, self.options.max_tokens, budget)
        if not sequences:
            raise SurgeonError("the calibration corpus has no sequence of two tokens or more")
        self._check_vocab(max(max(seq) for seq in sequences))
        tokens = sum(map(len, sequences))
        self.calibration = {
            **record,  # the corpus by name and file hash, never by its path on this machine
            "sha256": corpus_sha256(texts),
            "samples": len(sequences),
            "tokens": tokens,
            "token_budget": budget,
            "max_width": width,
            "tokens_per_width": round(tokens / width, 2),
            "bos_token_id": tokenizer.bos_token_id,
        }
        if tokens < MIN_TOKENS_PER_WIDTH * width:
            self._warn(
                f"calibration: {tokens} tokens for layers of width {width}, fewer than {MIN_TOKENS_PER_WIDTH} per "
                "column of G: the heal is poorly determined (give more text, or a larger --calib-tokens)"
            )
        return sequences, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def _width(self, spec: LayerSpec) -> int:
        """Columns of the widest G the layer captures: o_proj's input, or down_proj's with --ffn-frac."""
        heads = spec.num_heads * spec.head_dim
        return max(heads, spec.mlp.width) if self.options.ffn_frac and spec.mlp else heads

    def _warn(self, message: str) -> None:
        """A warning: recorded in the manifest's messages, and shown as it happens."""
        self.messages.append(message)
        if self.on_warning is not None:
            self.on_warning(message)

    def _write(self, workdir: Workdir, results, output: Path, force: bool, passes: dict, start: int) -> dict:
        """The checkpoint, with the pruned tensors copied from the workdir's layer files."""
        started = time.perf_counter()
        holder: dict = {}

        def manifest(report: WriteReport) -> dict:
            holder.update(self._manifest(report, results, passes["forward_calls"], start))
            holder["layer_passes"] = passes["layer_passes"]
            manifest_json(holder)  # refused here, before the writer publishes it, if it holds a NaN
            return holder

        sources = {}
        for result in results:
            if result.pruned:
                sources.update(workdir.layer_sources(result.layer, self._written(self.layout.layers[result.layer])))
        write_checkpoint(
            self.ckpt,
            output,
            sources,
            manifest=manifest,
            force=force,
            cancel=self.cancel,
            cache_dir=hash_cache_dir(),
            durable=self.durable,
        )
        self._time("write", started)
        return holder

    def _check_vocab(self, largest_id: int) -> None:
        embed = next(
            (t for n, t in self.ckpt.tensors.items() if self.layout.module_name(n) == "model.embed_tokens.weight"),
            None,
        )
        if embed is not None and largest_id >= embed.shape[0]:
            raise tokenizer_error(
                f"the tokenizer produced token id {largest_id} but the model's embedding has "
                f"{embed.shape[0]} rows: it is not the model's own tokenizer"
            )

    def _keep(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden.cpu() if self.options.offload_activations else hidden

    def _fingerprint(self, tokenizer_path: Path) -> dict:
        headers = {
            name: [
                shard.file_size,
                shard.header_sha256,
                os.stat(shard.path).st_mtime_ns,
            ]
            for name, shard in self.ckpt.shards.items()
        }
        tok_hash = tokenizer_hash(Path(tokenizer_path))
        options = record(self.options)  # the flat keys of before RunSettings: a workdir of then still resumes
        options["device"], options["dtype"] = self.device.type, str(self.dtype)
        fingerprint = {
            "base": headers,
            "options": options,
            "calibration": self.calibration["sha256"],
            "tokenizer": tok_hash,
            "surgeon": __version__,
        }
        return json.loads(json.dumps(fingerprint))  # as it reads back from disk (tuples become lists)

    def _resume(self, workdir: Workdir, stream: LayerStream, batches: list[Batch]):
        """(results, first layer to run): from the workdir where it holds a complete prefix
        of layers and the stream entering the next one, else from scratch. A damaged entry
        is a warning, and the saved layers are run again."""
        started = time.perf_counter()
        for batch in batches:
            stream.trace(batch)
        try:
            results, start = self._saved_layers(workdir, batches)
        except DamagedEntry as exc:
            self._warn(f"{exc}; the saved layers are run again")
            workdir.reset()
            results, start = [], 0
        for batch in batches:
            assert batch.hidden is not None  # traced above
            batch.hidden = self._keep(batch.hidden.to(self.device))
        self._time("trace", started)
        return results, start

    def _saved_layers(self, workdir: Workdir, batches: list[Batch]) -> tuple[list[LayerResult], int]:
        """The saved layers and the stream entering the next, each checked against this run
        (the batches just traced, the model's layers, the base's tensors) before any is used."""
        saved = workdir.load_stream()
        if saved is None or len(saved[1]) != len(batches):
            return [], 0
        start, hidden = saved
        if start > len(self.layout.layers):
            raise DamagedEntry(f"{workdir.path / 'stream.json'}: layer {start} of {len(self.layout.layers)}")
        for batch, saved_hidden in zip(batches, hidden, strict=True):
            traced = cast(torch.Tensor, batch.hidden)
            if (saved_hidden.shape, saved_hidden.dtype) != (traced.shape, traced.dtype):
                raise DamagedEntry(f"{workdir.path / 'stream.safetensors'}: its batches are not this run's")
        results = []
        for index in range(start):
            record = workdir.layer_record(index)
            if record is None:
                return [], 0
            results.append(self._saved_result(workdir, index, record))
        for batch, saved_hidden in zip(batches, hidden, strict=True):
            batch.hidden = saved_hidden
        return results, start

    def _saved_result(self, workdir: Workdir, index: int, record: dict) -> LayerResult:
        """A saved layer's record as this run would have made it: its geometry, its values'
        types, and a tensors file that holds base tensors exactly when the layer is pruned."""
        spec, pruned = self.layout.layers[index], index in self.selected
        fresh = asdict(_result(spec, pruned))
        fresh["ffn_width"] = spec.mlp.width if pruned and self.options.ffn_frac and spec.mlp else 0
        problem = record_problem(record, fresh)
        if problem is not None:
            raise DamagedEntry(f"{workdir.path / 'layers' / f'{index:05d}.json'}: {problem}")
        workdir.layer_sources(index, self._written(spec) if pruned else {})  # exactly what this layer writes
        return LayerResult(**record)

    def _written(self, spec: LayerSpec) -> dict[str, TensorInfo]:
        """The base tensors a pruned layer replaces (its heads' and its MLP's), by name, with their dtype and shape."""
        names = _pruned_names(spec) if self._prunes_heads(spec) else []
        if self.options.ffn_frac and spec.mlp is not None:
            names += [spec.mlp.gate_proj, spec.mlp.up_proj, spec.mlp.down_proj, *spec.mlp.biases]
        return {name: self.ckpt.tensors[name] for name in names}

    @contextlib.contextmanager
    def _phase(self, spec: LayerSpec, name: str, total: int, unit: str = "batches"):
        if self.on_phase is not None:
            self.on_phase(spec.index, name)
        # layers counted 1..N, as a person counts them (the checkpoint's own indices start at 0)
        self.progress.start(f"layer {spec.index + 1}/{len(self.layout.layers)} {name}", total, unit=unit)
        started = time.perf_counter()
        try:
            yield
        finally:
            self.progress.stop()
            self._time(name, started)

    def _layer(self, stream: LayerStream, spec: LayerSpec, batches: list[Batch]):
        started = time.perf_counter()
        if spec.index in self.selected:
            result, tensors = self._prune_layer(stream, spec, batches)
        else:
            layer = self._load(stream, spec)
            with self._phase(spec, "forward", len(batches)):
                self._advance(stream, layer, spec.index, batches)
            result, tensors = _result(spec, pruned=False), {}
        result.seconds = time.perf_counter() - started
        return result, tensors

    def _load(self, stream: LayerStream, spec: LayerSpec, replace: dict | None = None):
        """The layer's weights read and placed on the device: for a big layer read from disk
        or the network, the longest silent step without a phase of its own."""
        with self._phase(spec, "load", 1, unit="layer"):
            layer = stream.load_layer(spec.index, replace=replace)
            self.progress.advance(1)
        return layer

    def _advance(self, stream, layer, index, batches) -> None:
        """Replace every batch's stream by this layer's output."""
        for batch in batches:
            check_stop(self.should_stop)
            batch.hidden = self._keep(stream.run_layer(layer, index, batch))
            self.progress.advance(1)

    def _capture(
        self, stream, spec: LayerSpec, batches, weight_name: str, replace: dict | None = None, what: str = "capture"
    ) -> tuple[_Gram, torch.Tensor, list]:
        """One pass of the layer (the base's, or with `replace`): G of the input of the linear
        layer whose weight is `weight_name`, that weight as run, and the outputs (kept only
        for --propagate base)."""
        layer = self._load(stream, spec, replace=replace)
        module = layer.get_submodule(weight_name[len(spec.prefix) : -len(".weight")])
        gram = _Gram(int(module.weight.shape[1]), self.device)
        handle = module.register_forward_pre_hook(gram.hook)
        outputs = []
        with self._phase(spec, what, len(batches)):
            for batch in batches:
                check_stop(self.should_stop)
                gram.mask = batch.token_mask
                out = stream.run_layer(layer, spec.index, batch)
                outputs.append(self._keep(out) if self.options.propagate == "base" else None)
                self.progress.advance(1)
        handle.remove()
        return gram, module.weight.detach(), outputs

    def _prune_layer(self, stream, spec: LayerSpec, batches):
        """Heads first, then (--ffn-frac) the MLP's channels, captured again on the layer with
        its heads pruned: three layer passes for both, two for either alone."""
        result = _result(spec, pruned=True)
        tensors: dict[str, torch.Tensor] = {}
        base_out: list | None = None
        if self._prunes_heads(spec):
            tensors, base_out = self._prune_heads(stream, spec, batches, result)
        if self.options.ffn_frac:
            ffn_tensors, ffn_out = self._prune_ffn(stream, spec, batches, tensors, result)
            tensors.update(ffn_tensors)
            base_out = base_out if base_out is not None else ffn_out  # the base layer's, when no heads went first
        if self.options.propagate == "base":
            for batch, out in zip(batches, cast(list, base_out), strict=True):
                batch.hidden = out
        else:
            layer = self._load(stream, spec, replace=tensors)
            with self._phase(spec, "propagate", len(batches)):
                self._advance(stream, layer, spec.index, batches)
        return result, tensors

    def _prunes_heads(self, spec: LayerSpec) -> bool:
        """Whether the layer's heads are pruned: always, but for --ffn-frac with no heads asked of it."""
        if not self.options.ffn_frac:
            return True
        if self.balanced is not None:
            return self.options.prune_frac > 0
        return self.fracs.get(spec.index, self.options.prune_frac) > 0

    def _check_rank(self, spec: LayerSpec, gram: _Gram, which: str, width: str) -> None:
        """A warning where the heal would lean on its ridge: G of fewer independent tokens than columns."""
        if self.options.heal != "none" and not _full_rank(gram.matrix):
            self._warn(
                f"layer {spec.index}: {which} is rank-deficient ({gram.tokens} calibration tokens, {width}): "
                "the heal leans on its ridge; give more calibration text"
            )

    def _prune_heads(self, stream, spec: LayerSpec, batches, result: LayerResult):
        gram, o_weight, base_out = self._capture(stream, spec, batches, spec.o_proj)
        self._check_rank(spec, gram, "G", f"width {spec.num_heads * spec.head_dim}")
        with self._phase(spec, "importance", 1, unit=self.options.importance):
            scores = self._scores(stream, spec, batches, o_weight, gram)
            self.progress.advance(1)
        if self.balanced is not None:
            groups, per_group = self.balanced[spec.index]
            heads = select_balanced(scores, spec.num_heads, spec.num_kv_heads, groups, per_group)
        else:
            heads = select_heads(scores, spec, self.fracs.get(spec.index, self.options.prune_frac))
        with self._phase(spec, "heal", 1, unit=self.options.heal):
            tensors, refit = self._materialise(stream, spec, heads, gram)
            self.progress.advance(1)
        result.pruned_heads, result.scores, result.refit, result.tokens = heads, scores, refit, gram.tokens
        del gram, o_weight  # G and the base o_proj are done with: free them before the next load
        return tensors, base_out

    def _prune_ffn(self, stream, spec: LayerSpec, batches, replace: dict, result: LayerResult):
        """The MLP's channels: G of down_proj's input on the layer as pruned so far, the
        channels chosen by --ffn-importance, gate/up rows zeroed and down_proj healed."""
        mlp = cast(MlpSpec, spec.mlp)  # checked before the run (check_ffn)
        gram, _, outputs = self._capture(stream, spec, batches, mlp.down_proj, replace, what="ffn capture")
        check_gram(gram.matrix, spec, "the MLP's input")
        self._check_rank(spec, gram, "the MLP's G", f"{mlp.width} channels")
        stored = stream.read_tensors([mlp.gate_proj, mlp.up_proj, mlp.down_proj, *mlp.biases])
        ridge = self.options.ffn_ridge_rel
        job = FfnInput(stored[mlp.down_proj], gram.matrix, gram.sums, gram.tokens, ridge, self.device)
        with self._phase(spec, "ffn importance", 1, unit=self.options.ffn_importance):
            removed = choose_channels(
                self.options.ffn_importance, job, channels_to_prune(self.options.ffn_frac, mlp.width)
            )
            self.progress.advance(1)
        with self._phase(spec, "ffn heal", 1, unit=self.options.heal):
            down_bias = next((name for name in mlp.biases if name.startswith(mlp.down_proj[: -len("weight")])), None)
            healed = heal_down(job, removed, self.options.heal, stored[down_bias] if down_bias else None)
            self.progress.advance(1)
        tensors = {mlp.down_proj: healed.weight}
        for name in (mlp.gate_proj, mlp.up_proj, *(b for b in mlp.biases if b != down_bias)):
            zeroed = stored[name].clone()
            zeroed[removed] = 0
            tensors[name] = zeroed
        if down_bias is not None:
            tensors[down_bias] = cast(torch.Tensor, healed.bias)
        result.ffn_width, result.ffn_pruned_channels, result.ffn_refit = mlp.width, removed, healed.refit
        result.ffn_bias = _bias_word(down_bias is not None, self.options.heal)
        result.tokens = result.tokens or gram.tokens
        return tensors, outputs

    def _scores(self, stream, spec, batches, o_weight, gram) -> list[float]:
        job = ScoringInput(
            spec=spec,
            weight=o_weight,
            gram=gram.matrix,
            stream=stream,
            batches=batches,
            ridge_rel=self.options.ridge_rel,
            quant=self.options.importance_quant,
            should_stop=self.should_stop,
        )
        return SCORERS[self.options.importance](job)

    def _materialise(self, stream: LayerStream, spec: LayerSpec, heads: list[int], gram: _Gram):
        """The layer's new tensors, in the checkpoint's dtypes: healed o_proj, zeroed q rows."""
        stored = stream.read_tensors(_pruned_names(spec))
        q = stored[spec.q_proj].clone()
        rows = head_columns(heads, spec.head_dim)
        q[rows] = 0
        out = {spec.q_proj: q}
        if spec.q_bias:
            bias = stored[spec.q_bias].clone()
            bias[rows] = 0
            out[spec.q_bias] = bias
        job = HealInput(
            weight=stored[spec.o_proj],
            gram=gram.matrix,
            heads=heads,
            head_dim=spec.head_dim,
            ridge_rel=self.options.ridge_rel,
            tokens=gram.tokens,
            device=self.device,
        )
        out[spec.o_proj], refit = HEALERS[self.options.heal](job)
        return out, refit

    def _manifest(self, report: WriteReport, results: list[LayerResult], forward_calls: int, resumed_at: int):
        manifest: PruneManifest = {
            "schema": SCHEMA,
            "tool": tool_record(),
            "created": created_now(),
            # named by Hub id and commit, or by its folder's name and its hashes: a manifest is
            # published beside the weights, and a path of this machine means nothing there
            "base": {**source_record(self.ckpt), "shards": report.base_shards},
            "options": dict(
                record(self.options),  # options.device, .dtype, .tokenizer: flat, as the schema has them
                calib=self.options.calib and self.calibration["source"],
                tokenizer=self.options.run.tokenizer and Path(self.options.run.tokenizer).name,
            ),
            "device": str(self.device),
            "compute_dtype": str(self.dtype).replace("torch.", ""),
            "calibration": self.calibration,
            "head_counts": [count.record() for count in self.head_counts],
            "layers": [asdict(r) for r in results if r.pruned],
            "written": written_record(report, self._layer_of),
            "forward_calls": forward_calls,
            "resumed_at_layer": resumed_at,
            "messages": self.messages,
            "timings": dict(self.timings),
        }
        return manifest

    def _layer_of(self, name: str) -> int | None:
        for spec in self.layout.layers:
            if name.startswith(spec.prefix):
                return spec.index
        return None


def reshape_plan(
    ckpt: Checkpoint, layout: ModelLayout, selected: list[int], options: PruneOptions
) -> dict[int, tuple[int, int]]:
    """Per layer, (KV groups kept, query heads each keeps) for a reshape of `options.prune_frac`
    (prune.reshape_plan.solve: refused with the reachable fractions where it is not one), and
    the config the reshape will write asked of transformers now, before minutes of work."""
    from surgeon.prune.reshape import LayerHeads, reshaped_config
    from surgeon.prune.reshape_check import transformers_problem
    from surgeon.prune.reshape_plan import solve, type_geometries

    if sorted(selected) != list(range(len(layout.layers))):
        raise SurgeonError(
            "a reshape prunes every layer: transformers keeps one number of query heads and one MLP width for "
            "the whole model; prune all layers, or keep mask mode for some"
        )
    if not options.prune_frac and options.ffn_frac:  # MLP channels alone: every head kept
        _ask_transformers(ffn_config(ckpt.config or {}, layout, options), transformers_problem)
        return {}
    shape = solve(type_geometries(ckpt.config or {}), options.prune_frac)
    plan = {layer: (t.kv_heads, t.group) for t in shape.types for layer in t.geometry.layers}
    geometry = geometry_by_layer(ckpt.config, ckpt.tensors)
    planned = []
    for spec in layout.layers:
        removed = select_balanced([0.0] * spec.num_heads, spec.num_heads, spec.num_kv_heads, *plan[spec.index])
        found = geometry.get((layout.stack, spec.index))
        if found is None:  # the reshape reads the same geometry from the same names: refuse now
            raise SurgeonError(
                f"layer {spec.index}: its attention geometry cannot be read from the names: cannot reshape"
            )
        planned.append(LayerHeads(spec.index, found, {}, removed))
    config = reshaped_config(ckpt.config or {}, planned, shape.heads, ckpt.source)
    _ask_transformers(ffn_config(config, layout, options) if options.ffn_frac else config, transformers_problem)
    return plan


def _ask_transformers(config: dict, transformers_problem) -> None:
    problem = transformers_problem(config)
    if problem is not None:
        raise SurgeonError(f"transformers refuses the reshaped config ({problem}): cannot reshape; keep mask mode")


def ffn_config(config: dict, layout: ModelLayout, options: PruneOptions) -> dict:
    """`config` with the intermediate_size a reshape of `options.ffn_frac` will write: one
    width for every layer, so every layer's MLP must be the config's width."""
    from surgeon.model.geometry import text_config

    new = copy.deepcopy(config)
    text = text_config(new, None)
    size = text.get("intermediate_size")
    widths = sorted({spec.mlp.width for spec in layout.layers if spec.mlp is not None})
    if not isinstance(size, int) or widths != [size]:
        raise SurgeonError(
            f"the MLPs are {', '.join(map(str, widths))} channels wide and intermediate_size is {size!r}: a reshape "
            "of MLP channels needs every layer at the config's one width; keep mask mode"
        )
    text["intermediate_size"] = size - channels_to_prune(options.ffn_frac, size)
    return new


def check_ffn(layout: ModelLayout, selected: list[int], options: PruneOptions) -> None:
    """--ffn-frac needs a dense gate/up/down MLP in every pruned layer (a mixture of experts
    keeps its experts fused in one gate_up_proj, which surgeon does not prune)."""
    for index in selected:
        spec = layout.layers[index]
        if spec.experts:
            raise SurgeonError(
                f"layer {index} is a mixture of experts (fused experts.gate_up_proj): --ffn-frac prunes dense MLPs "
                "only; prune its heads alone"
            )
        if spec.mlp is None:
            raise SurgeonError(f"layer {index} has no gate_proj, up_proj and down_proj of matching shapes to prune")


def _bias_word(has_bias: bool, heal: str) -> str:
    """What took the removed channels' mean output: the refit bias, FLAP's compensation, or
    nothing (no bias: only the kept channels' refit can absorb it, and heal none cannot)."""
    if not has_bias:
        return "absent"
    return "compensated" if heal == "none" else "refit"


def _reshape_counts(layers: list[LayerSpec], plan: dict[int, tuple[int, int]], asked: float) -> list[HeadCount]:
    groups: dict[tuple[int, int], list[int]] = {}
    for spec in layers:
        kv, per = plan[spec.index]
        groups.setdefault((spec.num_heads, spec.num_heads - kv * per), []).append(spec.index)
    return [HeadCount(tuple(idx), heads, asked, pruned) for (heads, pruned), idx in groups.items()]


def _full_rank(gram: torch.Tensor) -> bool:
    """Whether G has full numerical rank (its eigenvalues above width x eps x the largest,
    torch's matrix_rank rule). One eigvalsh of G: under a second for width 8192 on a GPU,
    next to minutes of capture for such a layer."""
    return int(torch.linalg.matrix_rank(gram, hermitian=True)) == gram.shape[0]


def _pruned_names(spec: LayerSpec) -> list[str]:
    """The tensors pruning a layer rewrites: q_proj (and its bias) with the heads' rows zeroed, and o_proj healed."""
    return [spec.q_proj, spec.o_proj] + ([spec.q_bias] if spec.q_bias else [])


def _shown_name(workdir: Path) -> str:
    """The workdir as the manifest names it: its folder's name (`--workdir .` once gave "")."""
    return Path(os.path.realpath(workdir)).name or str(workdir)


def tokenizer_hash(folder: Path) -> str:
    """SHA256 of the folder's tokenizer* files, for the workdir's fingerprint, read in chunks:
    reading each whole made a 3 GB sparse tokenizer.sparse 6.6 GB of memory. As the writer's
    side files (surgeon.format.writer): only regular files, a link followed only inside the
    folder (or its Hub repo folder), and a file over SIDE_FILE_MAX, which the output never
    holds, stands by its name, size and time. The same digest as reading all the files whole
    wherever those are all the files (a workdir of before still resumes)."""
    inside = side_file_root(folder)
    digest = hashlib.sha256()
    for path in sorted(folder.glob("tokenizer*")):
        real = Path(os.path.realpath(path))
        if real.is_relative_to(inside):
            _hash_side_file(real, digest)
    return digest.hexdigest()


def _hash_side_file(path: Path, digest) -> None:
    try:
        with open_regular(path, follow_link=False) as (fd, info):
            if info.st_size > SIDE_FILE_MAX:
                digest.update(f"\0{path.name}\0{info.st_size}\0{info.st_mtime_ns}\0".encode())
                return
            left = SIDE_FILE_MAX  # a file may grow after fstat
            while left and (block := os.read(fd, min(COPY_CHUNK, left))):
                digest.update(block)
                left -= len(block)
    except SurgeonError:
        return  # a folder, a FIFO or unreadable: not a tokenizer file transformers reads either


def _result(spec: LayerSpec, pruned: bool) -> LayerResult:
    return LayerResult(spec.index, spec.layer_type, spec.num_heads, spec.num_kv_heads, spec.head_dim, pruned)
