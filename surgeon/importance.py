"""Per-head importance scores and head selection.

- recon: the o_proj output error left after removing the head and refitting the others,
  from G alone (heal-aware, cheap).
- norm: the head's output energy through o_proj, from G.
- loo-nll: the calibration NLL increase when the head is masked, measured end to end from
  this layer's cached input stream (layers 0..i-1 are never re-run); optionally on weights
  rounded to nf4 through bitsandbytes, as the reference recipe did.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from surgeon.adapters import LayerSpec
from surgeon.errors import SurgeonError
from surgeon.heal import norm_scores, recon_scores
from surgeon.parallel import StopCheck, check_stop
from surgeon.stream import Batch, LayerStream

IMPORTANCE = ("recon", "norm", "loo-nll")


def gram_scores(kind: str, weight: torch.Tensor, gram: torch.Tensor, spec: LayerSpec, ridge_rel: float):
    _check_gram(gram, spec)
    if kind == "recon":
        return recon_scores(weight, gram, spec.head_dim, ridge_rel)
    return norm_scores(weight, gram, spec.head_dim)


def _check_gram(gram: torch.Tensor, spec: LayerSpec) -> None:
    """Heads are scored (and o_proj healed) from G: a G that is not finite (a float16
    overflow, a config that does not fit the model) or all zero (no attention output at
    all) cannot rank them, and would surface as a singular-matrix error."""
    if not bool(torch.isfinite(gram).all()):
        raise SurgeonError(
            f"layer {spec.index}: the attention output on the calibration text is not finite (NaN or inf); "
            "try float32 compute"
        )
    if not bool(torch.diagonal(gram).any()):
        raise SurgeonError(f"layer {spec.index}: the attention output is zero on every calibration token")


def select_heads(scores: list[float], spec: LayerSpec, fraction: float) -> list[int]:
    """The `fraction` of query heads with the lowest scores (rounded half up), keeping at
    least one query head for every kv head."""
    count = min(math.floor(fraction * spec.num_heads + 0.5), spec.num_heads - spec.num_kv_heads)
    left_in_group = [spec.group_size] * spec.num_kv_heads
    chosen: list[int] = []
    for head in sorted(range(spec.num_heads), key=lambda h: (scores[h], h)):
        if len(chosen) >= count:
            break
        group = head // spec.group_size
        if left_in_group[group] > 1:
            chosen.append(head)
            left_in_group[group] -= 1
    return sorted(chosen)


def mask_heads_hook(o_proj: nn.Module, heads: list[int], head_dim: int):
    """Zero the o_proj input of `heads`: exactly what zeroing their o_proj columns does."""

    def hook(module, args):
        x = args[0].clone()
        for head in heads:
            x[..., head * head_dim : (head + 1) * head_dim] = 0
        return (x, *args[1:])

    return o_proj.register_forward_pre_hook(hook)


def nf4_round_trip(layer: nn.Module) -> nn.Module:
    """Round every Linear weight of a layer to nf4 and back, through bitsandbytes."""
    from bitsandbytes.functional import dequantize_4bit, quantize_4bit

    for module in layer.modules():
        if isinstance(module, nn.Linear):
            weight = module.weight.data
            packed, state = quantize_4bit(weight.float().contiguous(), quant_type="nf4")
            module.weight.data = dequantize_4bit(packed, state).to(weight.dtype)
    return layer


def loo_nll_scores(
    stream: LayerStream,
    spec: LayerSpec,
    batches: list[Batch],
    quant: str | None,
    should_stop: StopCheck | None = None,
) -> list[float]:
    """NLL(head masked) - NLL(nothing masked) per head, from layer spec.index's input stream.

    Layer-major: each later layer is loaded once and run on every variant's stream.
    """
    index, num_layers = spec.index, len(stream.layout.layers)

    def load(i: int) -> nn.Module:
        layer = stream.load_layer(i)
        return nf4_round_trip(layer) if quant == "nf4" else layer

    variants: list[list[int]] = [[], *([h] for h in range(spec.num_heads))]
    layer = load(index)
    streams = []
    for heads in variants:
        check_stop(should_stop)
        handle = mask_heads_hook(layer.self_attn.o_proj, heads, spec.head_dim)
        streams.append([stream.run_layer(layer, index, b) for b in batches])
        handle.remove()
    del layer
    for later in range(index + 1, num_layers):
        check_stop(should_stop)
        layer = load(later)
        streams = [[stream.run_layer(layer, later, b, h) for b, h in zip(batches, s, strict=True)] for s in streams]
        del layer
    nll = []
    for hidden in streams:
        total, count = 0.0, 0
        for batch, h in zip(batches, hidden, strict=True):
            part, tokens = stream.nll(h, batch)
            total, count = total + part, count + tokens
        nll.append(total / max(count, 1))
    return [value - nll[0] for value in nll[1:]]
