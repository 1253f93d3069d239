"""Run a checkpoint one decoder layer at a time, never loading the whole model.

The text model is built on the meta device (weights) with real buffers (rotary tables,
embedding scales). One forward of the model with every decoder layer replaced by a
recorder gives, for each layer, exactly the arguments the model itself would pass it:
rotary embeddings and mask for its layer type, position ids, per-layer inputs. Each real
layer is then materialised from the shards onto the device, run, and dropped.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field

import torch
from torch import nn

from surgeon.errors import SurgeonError
from surgeon.format.checkpoint import Checkpoint
from surgeon.model.families import ModelLayout, config_path
from surgeon.model.geometry import config_error
from surgeon.runtime.device import TORCH_DTYPES

READ_CHUNK = 16 << 20
EMBEDDING = "model.embed_tokens.weight"


class _Recorder(nn.Module):
    """Stands in for decoder layer i during the trace: keeps its arguments, changes nothing."""

    def __init__(self, index: int, calls: dict[int, tuple[tuple, dict]]):
        super().__init__()
        self.index = index
        self.calls = calls

    def forward(self, hidden_states, *args, **kwargs):
        self.calls[self.index] = (args, kwargs)
        return hidden_states


@dataclass
class Batch:
    """One micro-batch of calibration sequences (right-padded)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    hidden: torch.Tensor | None = None  # the current input of the next layer to run
    layer_args: dict[int, tuple[tuple, dict]] = field(default_factory=dict)

    @property
    def token_mask(self) -> torch.Tensor:
        return self.attention_mask.bool()


def make_batches(sequences: list[list[int]], batch_size: int, pad_id: int) -> list[Batch]:
    """Right-padded micro-batches of token sequences, `batch_size` sequences each."""
    batches = []
    for first in range(0, len(sequences), batch_size):
        group = sequences[first : first + batch_size]
        width = max(map(len, group))
        ids = torch.full((len(group), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for row, seq in enumerate(group):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        batches.append(Batch(ids, mask))
    return batches


class LayerStream:
    def __init__(self, ckpt: Checkpoint, layout: ModelLayout, device: torch.device, dtype: torch.dtype):
        self.ckpt, self.layout, self.device, self.dtype = ckpt, layout, device, dtype
        self.model, self._layers = _skeleton(layout, config_path(ckpt))
        params = self.model.named_parameters(remove_duplicate=False)
        self._shapes = {name: tuple(p.shape) for name, p in params}  # as the config builds them
        self.forward_calls = 0
        self._outside = self._outside_layers()
        self._head_ready = False
        self._materialise([m for m in self._outside if m.startswith("model.norm.")])  # small, always needed
        for module in self.model.modules():  # real buffers (rotary tables, scales) go to the device
            for name, buffer in module._buffers.items():
                if buffer is not None:
                    module._buffers[name] = buffer.to(self.device)
        self._check_layer_shapes()

    def _check_layer_shapes(self) -> None:
        """Every decoder layer's tensors against the shapes the config builds, from the
        headers alone, before any work: a config that misdescribes layer 5 is one line even
        when only layer 0 is to be run (prune stops after its last pruned layer)."""
        where = f"{config_path(self.ckpt)}: does not fit the weights:"
        for spec, layer in zip(self.layout.layers, self._layers, strict=False):
            for key, value in layer.state_dict().items():
                info = self.ckpt.tensors.get(spec.prefix + key)
                if info is not None and tuple(info.shape) != tuple(value.shape):
                    raise SurgeonError(
                        f"{where} {spec.prefix + key} is {list(info.shape)} in the checkpoint but "
                        f"{list(value.shape)} by the config"
                    )

    # -- weights ------------------------------------------------------------------
    def read_tensor(self, name: str) -> torch.Tensor:
        """One tensor by checkpoint name, as stored, read into fresh CPU memory (no mapping
        of the shard lingers in the resident set)."""
        info = self.ckpt.tensors[name]
        dtype = TORCH_DTYPES.get(info.dtype.name)
        if dtype is None:
            raise SurgeonError(f"{name}: dtype {info.dtype.name} cannot be loaded for compute")
        buffer = torch.empty(info.nbytes, dtype=torch.uint8)
        with open(self.ckpt.shard_path(info.file), "rb", buffering=0) as handle:
            got = os.preadv(handle.fileno(), [buffer.numpy().data], info.start) if info.nbytes else 0
        if got != info.nbytes:
            raise SurgeonError(f"{self.ckpt.shard_path(info.file)}: ended inside tensor {name}")
        return buffer.view(dtype).reshape(info.shape)

    def read_tensors(self, names: list[str]) -> dict[str, torch.Tensor]:
        return {name: self.read_tensor(name) for name in names}

    def read_as(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        """A tensor converted to `dtype` on the CPU, read in chunks: the peak is the result
        plus one chunk, not the result plus a stored copy (the embedding matters here)."""
        info = self.ckpt.tensors[name]
        stored = TORCH_DTYPES.get(info.dtype.name)
        if stored is None or stored == dtype or len(info.shape) == 0 or info.nbytes <= READ_CHUNK:
            return self.read_tensor(name).to(dtype)
        out = torch.empty(info.shape, dtype=dtype)
        flat = out.view(-1)
        item = info.nbytes // info.numel
        step = READ_CHUNK // item
        buffer = torch.empty(step * item, dtype=torch.uint8)
        with open(self.ckpt.shard_path(info.file), "rb", buffering=0) as handle:
            for first in range(0, info.numel, step):
                count = min(step, info.numel - first)
                part = buffer[: count * item]
                if os.preadv(handle.fileno(), [part.numpy().data], info.start + first * item) != count * item:
                    raise SurgeonError(f"{self.ckpt.shard_path(info.file)}: ended inside tensor {name}")
                flat[first : first + count].copy_(part.view(stored))
        return out

    def _outside_layers(self) -> dict[str, str]:
        """Module name -> checkpoint name of every weight outside the decoder layers."""
        wanted = {}
        for name in self.ckpt.tensors:
            module_name = self.layout.module_name(name)
            if module_name is not None and not module_name.startswith("model.layers."):
                wanted[module_name] = name
        if EMBEDDING not in wanted and "lm_head.weight" in wanted and self.layout.config.get("tie_word_embeddings"):
            wanted[EMBEDDING] = wanted["lm_head.weight"]  # tied, stored under the head's name (GGUF conversions)
        expected = {n for n, _ in self.model.named_parameters()}
        self._tied = "lm_head.weight" in expected and "lm_head.weight" not in wanted
        missing = sorted(n for n in expected if n not in wanted and n != "lm_head.weight")
        if missing:
            raise SurgeonError(f"{self.ckpt.source}: no tensor for {missing[0]} in the checkpoint")
        return wanted

    def _materialise(self, module_names: list[str]) -> None:
        for module_name in module_names:
            value = self._checked(self._outside[module_name], self._shapes[module_name], {})
            _set_parameter(self.model, module_name, value.to(self.device))

    def _evict(self, module_names: list[str]) -> None:
        for module_name in module_names:
            old = self.model.get_parameter(module_name)
            _set_parameter(self.model, module_name, torch.empty(old.shape, dtype=old.dtype, device="meta"))

    def _head_names(self) -> list[str]:
        head = [m for m in self._outside if m.startswith("lm_head.")]
        return head + (["model.embed_tokens.weight"] if self._tied else [])

    def load_layer(self, index: int, replace: dict[str, torch.Tensor] | None = None) -> nn.Module:
        """Decoder layer `index` with its weights on the device; `replace` maps checkpoint
        names to tensors used instead of the stored ones. Tensors are read and converted one
        at a time, so the peak is the layer plus one stored tensor."""
        layer = copy.deepcopy(self._layers[index])
        prefix = self.layout.layers[index].prefix
        replace = replace or {}
        for key, value in layer.state_dict().items():
            tensor = self._checked(prefix + key, tuple(value.shape), replace)
            layer.load_state_dict({key: tensor.to(self.device)}, strict=False, assign=True)
        return layer.to(self.device).eval()

    def _checked(self, name: str, shape: tuple, replace: dict[str, torch.Tensor]) -> torch.Tensor:
        """One tensor in the compute dtype, checked against the module the config built: a
        config whose values have the right types but not the weights' sizes (16 heads where
        q_proj holds 8) is one line naming the config and the tensor."""
        where = f"{config_path(self.ckpt)}: does not fit the weights:"
        if name not in replace and name not in self.ckpt.tensors:
            raise SurgeonError(f"{where} the model it describes has {name}, which the checkpoint lacks")
        value = replace[name].to(self.dtype) if name in replace else self.read_as(name, self.dtype)
        if tuple(value.shape) != shape:
            raise SurgeonError(
                f"{where} {name} is {list(value.shape)} in the checkpoint but {list(shape)} by the config"
            )
        return value

    # -- running ------------------------------------------------------------------
    @torch.no_grad()
    def trace(self, batch: Batch) -> None:
        """Fill batch.hidden (the embeddings) and batch.layer_args (each layer's arguments)."""
        # The embeddings are needed here only: loaded for the trace, dropped after it (a tied
        # embedding already loaded as the lm_head stays).
        keep = set(self._head_names()) if self._head_ready else set()
        names = [m for m in self._outside if not m.startswith(("model.norm.", "lm_head.")) and m not in keep]
        compact = EMBEDDING in names
        names = [m for m in names if m != EMBEDDING]
        self._materialise(names)
        hook = self._compact_embedding(batch.input_ids) if compact else None
        try:
            self._record(batch)
        finally:
            if hook is not None:
                hook.remove()
                self._evict([EMBEDDING])
            self._evict(names)

    def _compact_embedding(self, input_ids: torch.Tensor):
        """Only the embedding rows this batch uses, with the ids remapped on the way in: the
        full table (vocab x hidden, in the compute dtype) never has to be in memory."""
        used, remapped = torch.unique(input_ids, return_inverse=True)
        info = self.ckpt.tensors[self._outside[EMBEDDING]]
        row_bytes = info.nbytes // info.shape[0]
        rows = torch.empty((len(used), row_bytes), dtype=torch.uint8)
        with open(self.ckpt.shard_path(info.file), "rb", buffering=0) as handle:
            for i, token in enumerate(used.tolist()):
                os.preadv(handle.fileno(), [rows[i].numpy().data], info.start + token * row_bytes)
        stored = TORCH_DTYPES[info.dtype.name]
        table = rows.view(stored).reshape(len(used), *info.shape[1:]).to(self.device, self.dtype)
        _set_parameter(self.model, EMBEDDING, table)
        remapped = remapped.to(self.device)
        return self.model.get_input_embeddings().register_forward_pre_hook(lambda module, args: (remapped,))

    def _record(self, batch: Batch) -> None:
        calls: dict[int, tuple[tuple, dict]] = {}
        recorders = nn.ModuleList(_Recorder(i, calls) for i in range(len(self._layers)))
        text_model = self.model.model
        text_model.layers = recorders
        first: list[torch.Tensor] = []
        handle = recorders[0].register_forward_pre_hook(lambda m, a: first.append(a[0]))
        try:
            text_model(
                input_ids=batch.input_ids.to(self.device),
                attention_mask=batch.attention_mask.to(self.device),
                use_cache=False,
            )
        finally:
            handle.remove()
            text_model.layers = nn.ModuleList()
        batch.hidden = first[0]
        batch.layer_args = calls

    @torch.no_grad()
    def run_layer(self, layer: nn.Module, index: int, batch: Batch, hidden: torch.Tensor | None = None):
        args, kwargs = batch.layer_args[index]
        self.forward_calls += 1
        source = batch.hidden if hidden is None else hidden
        assert source is not None, "trace(batch) records a batch's hidden state before any layer runs"
        return layer(source.to(self.device), *args, **kwargs)

    @torch.no_grad()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """What the *ForCausalLM head makes of the last layer's output (norm, lm_head, softcap)."""
        if not self._head_ready:
            self._materialise(self._head_names())
            if self._tied:
                self.model.lm_head.weight = self.model.get_input_embeddings().weight
            self._head_ready = True
        logits = self.model.lm_head(self.model.model.norm(hidden.to(self.device)))
        cap = self.layout.config.get("final_logit_softcapping")
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    @torch.no_grad()
    def nll(self, hidden: torch.Tensor, batch: Batch) -> tuple[float, int]:
        """Summed next-token negative log-likelihood over real (unpadded) tokens, and their count."""
        logits = self.logits(hidden).float()
        targets = batch.input_ids[:, 1:].to(logits.device)
        valid = (batch.attention_mask[:, 1:] & batch.attention_mask[:, :-1]).bool().to(logits.device)
        losses = nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
        )
        valid = valid.reshape(-1)
        return float(losses[valid].sum()), int(valid.sum())


def _set_parameter(model: nn.Module, name: str, value: torch.Tensor) -> None:
    owner, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(owner), leaf, nn.Parameter(value, requires_grad=False))


def _skeleton(layout: ModelLayout, where: str):
    """The text-only *ForCausalLM with meta weights and real buffers; layers kept aside."""
    # deferred: transformers costs 1.7 s on top of torch (measured); a bad option or
    # checkpoint is reported before it, and resolve_device/make_batches users skip it
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(layout.config)
    cfg["model_type"] = layout.family
    model_type = cfg.pop("model_type")
    try:
        config = AutoConfig.for_model(model_type, **cfg)
    except Exception as exc:  # transformers' own type checks of values surgeon does not read
        error = config_error(exc, where)
        if error is None:
            raise
        raise error from None
    config._attn_implementation = "sdpa"
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config)
    layers = list(model.model.layers)
    model.model.layers = nn.ModuleList()
    return model.eval(), layers
