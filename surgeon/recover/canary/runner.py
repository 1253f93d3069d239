"""Running the canary: loading models (full precision, nf4, or composed in memory),
generating greedily and scoring continuations. Torch and transformers live here."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

import torch
from safetensors import safe_open

from surgeon.diff.engine import DiffOptions, diff_checkpoints
from surgeon.errors import SurgeonError, first_line
from surgeon.format.checkpoint import Checkpoint, open_checkpoint
from surgeon.format.hashcache import HashCache, hash_cache_dir
from surgeon.format.hashing import hash_shards
from surgeon.jsonfile import open_regular
from surgeon.model.families import check_layer_count, checked_config, config_path
from surgeon.model.geometry import config_error
from surgeon.parallel import check_stop
from surgeon.progress import NoProgress
from surgeon.recover.canary.checks import (
    CanaryOptions,
    CanaryReport,
    Prompt,
    PromptResult,
    agreement,
    bigram_repetition,
    cache_key,
    cache_read,
    cache_write,
    judge,
    nonprintable_fraction,
    prompt_ids,
    ratio,
    usable_prompts,
    verdict,
)
from surgeon.runtime.device import resolve_run
from surgeon.runtime.settings import RunSettings
from surgeon.runtime.threads import use_cpu_threads
from surgeon.runtime.tokenizer import load_tokenizer


class CanaryModel:
    """A causal LM to generate with and score; `apply` swaps tensors in place."""

    def __init__(self, ckpt: Checkpoint, run: RunSettings = RunSettings()):
        # transformers is imported where a model is loaded: 1.7 s on top of torch (measured),
        # and a bad prompt file, option or checkpoint is reported before it
        from transformers import BitsAndBytesConfig
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # surgeon reports its own progress
        self.device, self.dtype = resolve_run(run)
        self.quant = run.quant
        kwargs: dict = {"dtype": self.dtype}
        if self.quant == "nf4":
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=self.dtype
            )
        if self.device.type == "cuda":
            kwargs["device_map"] = "auto" if self.quant else {"": str(self.device)}
        self.model = _from_pretrained(_checked(ckpt), kwargs)
        if self.device.type != "cuda" and not self.quant:
            self.model.to(self.device)
        use_cpu_threads(self.device, getattr(self.model.config.get_text_config(), "hidden_size", None))
        self.eos = _eos_ids(self.model)

    @property
    def input_device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @torch.no_grad()
    def generate(self, ids: list[int], max_new_tokens: int) -> list[int]:
        prompt = torch.tensor([ids], device=self.input_device)
        out = self.model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=next(iter(self.eos), 0),
        )
        new = out[0, len(ids) :].tolist()
        for position, token in enumerate(new):
            if token in self.eos:
                return new[:position]
        return new

    @torch.no_grad()
    def nll(self, ids: list[int], continuation: list[int]) -> float:
        """Mean NLL of `continuation` following `ids`."""
        if not continuation:
            return 0.0
        full = torch.tensor([ids + continuation], device=self.input_device)
        logits = self.model(input_ids=full).logits[0, len(ids) - 1 : -1].float()
        target = torch.tensor(continuation, device=logits.device)
        return float(torch.nn.functional.cross_entropy(logits, target))

    @torch.no_grad()
    def apply(self, tensors: dict[str, torch.Tensor]) -> None:
        if self.quant:
            raise SurgeonError("composing a model in memory needs full precision, not a quantized model")
        for name, value in tensors.items():
            param = self.model.get_parameter(name)
            param.copy_(value.to(param.device, param.dtype))


def _from_pretrained(ckpt: Checkpoint, kwargs: dict):
    """transformers' model of `ckpt`, every failure one line. transformers' own load report
    (a table on stderr) is silenced, so a weight it would have left random is refused here:
    a canary of a model with random weights means nothing."""
    from transformers import AutoModelForCausalLM  # deferred: 1.7 s, see CanaryModel
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        # output_loading_info=True makes it a (model, loading info) pair, which transformers'
        # return annotation (the model alone) leaves out
        model, info = cast(
            "tuple[Any, dict]",
            AutoModelForCausalLM.from_pretrained(str(ckpt.root), output_loading_info=True, **kwargs),
        )
    except (OSError, ValueError) as exc:
        first = first_line(exc)
        raise SurgeonError(f"{ckpt.source}: cannot load the model ({first})") from None
    except Exception as exc:
        raise _load_error(exc, ckpt) from None
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise SurgeonError(f"{ckpt.source}: the model needs {missing[0]}{more}, which the checkpoint lacks")
    return model.eval()


def _load_error(exc: Exception, ckpt: Checkpoint) -> Exception:
    """A config transformers rejects, or one whose sizes do not fit the weights, as one line;
    anything else as it is."""
    error = config_error(exc, config_path(ckpt))  # transformers' checks of values surgeon does not read
    if error is None and isinstance(exc, RuntimeError) and "mismatched_sizes" in str(exc):
        error = SurgeonError(
            f"{config_path(ckpt)}: does not fit the weights: tensor sizes differ from the model it describes"
        )
    return error if error is not None else exc


def _checked(ckpt: Checkpoint) -> Checkpoint:
    """`ckpt`, once every config value surgeon reads has the right type (one line naming the
    key otherwise, before any model is loaded)."""
    checked_config(ckpt)
    check_layer_count(ckpt)
    return ckpt


def _eos_ids(model) -> set[int]:
    eos = model.generation_config.eos_token_id if model.generation_config else None
    eos = eos if eos is not None else model.config.eos_token_id
    return set(eos) if isinstance(eos, list) else ({eos} if eos is not None else set())


def weights_hash(ckpt: Checkpoint) -> str:
    """One SHA256 over the checkpoint's shard SHA256s (through the hash cache)."""
    hashes = hash_shards(list(ckpt.shards.values()), HashCache(hash_cache_dir()))
    by_name = sorted((name, hashes[_real(ckpt, name)].file_sha256) for name in ckpt.shards)
    return hashlib.sha256(repr(by_name).encode()).hexdigest()


def _real(ckpt: Checkpoint, shard: str) -> str:
    return os.path.realpath(ckpt.shard_path(shard))


def tokenizer_hash(path: Path) -> str:
    """The tokenizer files' names and bytes, for the cache key, read in chunks (the prune
    fingerprint's files, read whole, once took 6.6 GB for a 3 GB sparse file). Links are
    followed, as the tokenizer that is loaded follows them: the key must change with it."""
    files = sorted(p for p in Path(path).iterdir() if p.is_file() and ("token" in p.name or p.suffix == ".jinja"))
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode() + b"\0")
        with open_regular(file) as (fd, _):
            while block := os.read(fd, 1 << 20):
                digest.update(block)
    return digest.hexdigest()


class BaseOutputs:
    """The base's greedy continuation and its NLL per prompt, and the base judged against
    itself, from the cache or computed."""

    def __init__(self, base: Checkpoint, options: CanaryOptions, run: RunSettings, cache_dir: Path | None):
        self.base, self.options, self.run, self.cache_dir = base, options, run, cache_dir
        import transformers  # deferred: 1.7 s, see CanaryModel; here only for its version

        self.key_parts = {
            "versions": [torch.__version__, transformers.__version__],  # generation can change with them
            "weights": weights_hash(base),
            "tokenizer": tokenizer_hash(run.tokenizer_dir(base.root)),
            "bos": options.bos,
            "max_new_tokens": options.max_new_tokens,
            "decoding": "greedy",
            "dtype": run.dtype,  # as given: "auto" is another key than what it resolves to
            "device": resolve_run(run)[0].type,
            "quant": run.quant,
        }
        self.hits = 0
        self.self_check: dict | None = None

    def get(
        self,
        prompts: list[Prompt],
        ids: list[list[int]],
        tokenizer,
        model: CanaryModel | None = None,
        progress=None,
        cancel=None,
    ):
        """The base's outputs per prompt, once the base has passed against itself (a
        SurgeonError otherwise: a canary measured against such a base means nothing).
        `cancel` is looked at between prompts: what was generated stays in the cache."""
        progress = progress or NoProgress()
        keys = [cache_key(self.key_parts | {"prompt": p.label, "ids": i}) for p, i in zip(prompts, ids, strict=True)]
        found = [cache_read(self.cache_dir, key) for key in keys]
        missing = [n for n, value in enumerate(found) if value is None]
        self.hits = len(prompts) - len(missing)
        if missing:
            model = model or loading("base", progress, lambda: self._model())
            progress.start("base: generating", len(missing), unit="prompts")
            for n in missing:
                check_stop(cancel.is_set if cancel is not None else None)
                tokens = model.generate(ids[n], self.options.max_new_tokens)
                entry = {"tokens": tokens, "nll": model.nll(ids[n], tokens)}
                found[n] = entry
                cache_write(self.cache_dir, keys[n], entry)
                progress.advance(1)
            progress.stop()
        # The self-check is keyed by the outputs themselves: an entry changed since it was
        # checked (tampered, or left by another version) is checked again.
        outputs = hashlib.sha256(json.dumps(found, sort_keys=True).encode()).hexdigest()
        check_key = cache_key(
            self.key_parts | {"self_check": keys, "outputs": outputs, "options": asdict(self.options)}
        )
        cached_check = cache_read(self.cache_dir, check_key, valid=_is_self_check)
        if cached_check is None:
            model = model or loading("base", progress, lambda: self._model())
            results = score(
                model, tokenizer, prompts, ids, found, self.options, cancel=cancel, progress=progress, label="base"
            )
            cached_check = _self_check_record(results, self.options)
            cache_write(self.cache_dir, check_key, cached_check)
            self.self_check = cached_check | {"cached": False}
        else:
            self.self_check = cached_check | {"cached": True}
        if not self.self_check["passed"]:
            raise SurgeonError(
                f"{self.base.source}: the base fails the canary against itself ({self.self_check['failed']} of "
                f"{self.self_check['prompts']} prompts; {self.self_check['first_failure']}): no verdict can be "
                "given against it (its generation is not deterministic here, or the limits are tighter than "
                "its own variation)"
            )
        return found

    def _model(self) -> CanaryModel:
        return CanaryModel(self.base, self.run)


def loading(what: str, progress, load):
    """load(), shown as a step of its own: loading a model takes seconds to minutes."""
    progress.start(f"{what}: loading", 1, unit="step")
    try:
        model = load()
        progress.advance(1)
        return model
    finally:
        progress.stop()


def _self_check_record(results: list[PromptResult], options: CanaryOptions) -> dict:
    """The base against its recorded outputs: every check, and the tokens themselves (greedy
    generation is deterministic, so the base must generate exactly what was recorded)."""
    differing = [r for r in results if r.agreement < r.base_tokens or r.tokens != r.base_tokens]
    for r in differing:
        r.failures.append(f"generated {r.agreement} of the {r.base_tokens} recorded tokens before differing")
    failing = [r for r in results if not r.passed]
    first = f"{failing[0].prompt[:60]!r}: {failing[0].failures[0]}" if failing else ""
    return {
        "passed": verdict(results, options) and not differing,  # any difference: not deterministic, or tampered
        "failed": len(failing),
        "prompts": len(results),
        "first_failure": first,
    }


def _is_self_check(entry: object) -> bool:
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("passed"), bool)
        and all(isinstance(entry.get(k), int) and not isinstance(entry.get(k), bool) for k in ("failed", "prompts"))
        and isinstance(entry.get("first_failure"), str)
    )


def score(
    model: CanaryModel,
    tokenizer,
    prompts,
    ids,
    base_out,
    options: CanaryOptions,
    *,
    cancel=None,
    progress=None,
    label: str = "canary",
) -> list[PromptResult]:
    """Each prompt's checks; `cancel` (a threading.Event) is looked at between prompts."""
    progress = progress or NoProgress()
    results = []
    progress.start(label, len(prompts), unit="prompts")
    for prompt, prompt_tokens, base in zip(prompts, ids, base_out, strict=True):
        check_stop(cancel.is_set if cancel is not None else None)
        results.append(_score_one(model, tokenizer, prompt, prompt_tokens, base, options))
        progress.advance(1)
    progress.stop()
    return results


def _score_one(model: CanaryModel, tokenizer, prompt: Prompt, prompt_tokens, base: dict, options) -> PromptResult:
    tokens = model.generate(prompt_tokens, options.max_new_tokens)
    on_base = model.nll(prompt_tokens, base["tokens"])
    on_own = on_base if tokens == base["tokens"] else model.nll(prompt_tokens, tokens)
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    base_text = tokenizer.decode(base["tokens"], skip_special_tokens=True)
    result = PromptResult(
        prompt=prompt.label,
        base_text=base_text,
        text=text,
        drift=ratio(on_base, base["nll"], options.nll_floor),
        self_ratio=ratio(on_base, on_own, options.nll_floor),
        repetition=bigram_repetition(tokens),
        nonprintable=nonprintable_fraction(text),
        tokens=len(tokens),
        agreement=agreement(tokens, base["tokens"]),
        base_repetition=bigram_repetition(base["tokens"]),
        base_nonprintable=nonprintable_fraction(base_text),
        base_tokens=len(base["tokens"]),
        kind=prompt.kind,
    )
    judge(result, options)
    return result


def run_canary(
    model_path: str,
    base_path: str,
    prompts: list[Prompt],
    options: CanaryOptions = CanaryOptions(),
    *,
    run: RunSettings = RunSettings(),
    cache_dir: Path | None = None,
    progress=None,
) -> CanaryReport:
    """Canary of MODEL against BASE, one model in memory at a time, both run as RUN says
    (nf4 included); `progress` sees each model load and each prompt, for the base (unless
    cached) and for the model."""
    progress = progress or NoProgress()
    options.validate()
    resolve_run(run)  # a bad device is one line before any loading
    base, model_ckpt = _checked(open_checkpoint(base_path)), _checked(open_checkpoint(model_path))
    tokenizer = load_tokenizer(run.tokenizer_dir(base.root))
    prompts = usable_prompts(prompts, tokenizer)
    ids = [prompt_ids(tokenizer, p, options.bos) for p in prompts]
    outputs = BaseOutputs(base, options, run, cache_dir)
    base_out = outputs.get(prompts, ids, tokenizer, progress=progress)
    model = loading("model", progress, lambda: CanaryModel(model_ckpt, run))
    results = score(model, tokenizer, prompts, ids, base_out, options, progress=progress, label="model")
    return _report(results, options, outputs.hits == len(prompts), self_check=outputs.self_check)


def _report(results, options, cache_hit, layers=None, self_check=None) -> CanaryReport:
    return CanaryReport(verdict(results, options), results, asdict(options), cache_hit, layers, self_check)


class ComposedCanary:
    """The base model in memory, with the changed tensors of chosen layers swapped in from a
    candidate: trying a rollback plan costs no disk write."""

    def __init__(
        self,
        base_path,
        candidate_path,
        prompts,
        options=CanaryOptions(),
        *,
        run: RunSettings = RunSettings(),
        cache_dir=None,
        changed: dict[int, list[str]] | None = None,
        progress=None,
        cancel=None,
    ):
        """`cancel` (a threading.Event) is looked at between the loading steps and the
        base's prompts: a cancel during the load took effect only once the base had
        generated every prompt (seconds on the demo, minutes on a real model)."""
        options.validate()
        progress = progress or NoProgress()
        stop = cancel.is_set if cancel is not None else None
        if run.quant is not None:  # CanaryModel.apply copies full-precision tensors into the model
            raise SurgeonError("composing a model in memory needs full precision, not a quantized model")
        resolve_run(run)  # a bad device is one line before any loading
        self.base = _checked(open_checkpoint(base_path))
        self.candidate = _checked(open_checkpoint(candidate_path))
        self.tokenizer = load_tokenizer(run.tokenizer_dir(self.base.root))
        self.prompts, self.options = usable_prompts(prompts, self.tokenizer), options
        self.ids = [prompt_ids(self.tokenizer, p, options.bos) for p in self.prompts]
        check_stop(stop)
        self.model = loading("base", progress, lambda: CanaryModel(self.base, run))
        check_stop(stop)
        self.outputs = BaseOutputs(self.base, options, run, cache_dir)
        self.base_out = self.outputs.get(
            self.prompts, self.ids, self.tokenizer, model=self.model, progress=progress, cancel=cancel
        )
        check_stop(stop)
        self.changed = changed if changed is not None else changed_by_layer(self.base, self.candidate)
        names = [n for layer_names in self.changed.values() for n in layer_names]
        self._base_tensors = _read(self.base, names)
        self._candidate_tensors = _read(self.candidate, names)
        self.runs = 0
        self.reports: dict[frozenset[int], CanaryReport] = {}  # per set of kept layers

    def run(self, layers, *, cancel=None, progress=None) -> CanaryReport:
        """Canary of base + the candidate's changes in `layers`. Generation is deterministic
        (greedy), so a plan already run is answered from memory."""
        keep = frozenset(layers) & frozenset(self.changed)
        if keep in self.reports:
            return self.reports[keep]
        swap = {}
        for layer, names in self.changed.items():
            source = self._candidate_tensors if layer in keep else self._base_tensors
            swap.update({n: source[n] for n in names})
        self.model.apply(swap)
        results = score(
            self.model,
            self.tokenizer,
            self.prompts,
            self.ids,
            self.base_out,
            self.options,
            cancel=cancel,
            progress=progress,
        )
        self.runs += 1
        self.reports[keep] = _report(results, self.options, True, sorted(keep), self.outputs.self_check)
        return self.reports[keep]


def changed_by_layer(base: Checkpoint, candidate: Checkpoint) -> dict[int, list[str]]:
    """Layer -> names of its tensors whose bytes differ between base and candidate."""
    return layer_changes(diff_checkpoints(base, candidate, DiffOptions(cache_dir=hash_cache_dir(), stats=False)))


def layer_changes(report) -> dict[int, list[str]]:
    """Layer -> names of its changed tensors, from a diff already made; refuses what cannot
    be composed (tensors added, removed or retyped, or changed outside any layer)."""
    out: dict[int, list[str]] = {}
    for t in report.tensors:
        if t.status == "changed" and t.layer is not None:
            out.setdefault(t.layer, []).append(t.name)
        elif t.status != "identical":
            where = "in the candidate" if t.layer is not None else "outside any layer"
            raise SurgeonError(f"{t.name}: {t.status} {where}; the canary composes changed layers only")
    return out


def _read(ckpt: Checkpoint, names: list[str]) -> dict[str, torch.Tensor]:
    out = {}
    by_shard: dict[str, list[str]] = {}
    for name in names:
        by_shard.setdefault(ckpt.tensors[name].file, []).append(name)
    for shard, shard_names in by_shard.items():
        with safe_open(ckpt.shard_path(shard), framework="pt") as handle:
            out.update({n: handle.get_tensor(n) for n in shard_names})
    return out
