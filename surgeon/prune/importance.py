"""Per-head importance scores and head selection.

- recon: the o_proj output error left after removing the head and refitting the others,
  from G alone (heal-aware, cheap).
- norm: the head's output energy through o_proj, from G.
- loo-nll: the calibration NLL increase when the head is masked, measured end to end from
  this layer's cached input stream (layers 0..i-1 are never re-run); optionally on weights
  rounded to nf4 through bitsandbytes, as the reference recipe did.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass

import torch
from torch import nn

from surgeon.errors import SurgeonError
from surgeon.model.families import LayerSpec
from surgeon.parallel import StopCheck, check_stop
from surgeon.prune.heads import heads_to_prune
from surgeon.prune.heal import norm_scores, recon_scores
from surgeon.runtime.stream import Batch, LayerStream


@dataclass(frozen=True)
class ScoringInput:
    """What a scorer may use for one layer: its o_proj weight and Gram matrix G (recon, norm)
    or its input stream and calibration batches (loo-nll, end to end)."""

    spec: LayerSpec
    weight: torch.Tensor
    gram: torch.Tensor
    stream: LayerStream
    batches: list[Batch]
    ridge_rel: float
    quant: str | None
    should_stop: StopCheck | None


def _recon(job: ScoringInput) -> list[float]:
    check_gram(job.gram, job.spec)
    return recon_scores(job.weight, job.gram, job.spec.head_dim, job.ridge_rel)


def _norm(job: ScoringInput) -> list[float]:
    check_gram(job.gram, job.spec)
    return norm_scores(job.weight, job.gram, job.spec.head_dim)


def _loo_nll(job: ScoringInput) -> list[float]:
    return loo_nll_scores(job.stream, job.spec, job.batches, quant=job.quant, should_stop=job.should_stop)


# The importance scorers by name: the names are owned by surgeon.prune.options.Importance
# (the CLI's choices, read without torch); tests/prune/test_registries.py holds the two in step.
SCORERS: dict[str, Callable[[ScoringInput], list[float]]] = {"recon": _recon, "norm": _norm, "loo-nll": _loo_nll}


def check_gram(gram: torch.Tensor, spec: LayerSpec, what: str = "the attention output") -> None:
    """Heads are scored (and o_proj healed) from G, MLP channels from down_proj's input's
    (`what`): a G that is not finite (a float16 overflow, a config that does not fit the
    model) or all zero (no output at all) cannot rank them, and would surface as a
    singular-matrix error."""
    if not bool(torch.isfinite(gram).all()):
        raise SurgeonError(
            f"layer {spec.index}: {what} on the calibration text is not finite (NaN or inf); try float32 compute"
        )
    if not bool(torch.diagonal(gram).any()):
        raise SurgeonError(f"layer {spec.index}: {what} is zero on every calibration token")


def select_heads(scores: list[float], spec: LayerSpec, fraction: float) -> list[int]:
    """The `fraction` of query heads with the lowest scores, as many as heads_to_prune says
    (the count the CLI and the manifest report), keeping a query head for every kv head."""
    count = heads_to_prune(fraction, spec.num_heads, spec.num_kv_heads)
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


def select_balanced(scores: list[float], num_heads: int, num_kv_heads: int, groups: int, per_group: int) -> list[int]:
    """The query heads a reshape removes, so that what is left slices into `groups` whole KV
    groups of `per_group` query heads each (query head h uses KV head h // group size): the
    lowest-scoring groups go whole (their heads summed), then the lowest-scoring heads of
    every kept group, the same count from each. Ties go to the lower index, as select_heads."""
    size = num_heads // num_kv_heads
    if not (1 <= groups <= num_kv_heads and 1 <= per_group <= size) or num_heads % num_kv_heads:
        raise ValueError(f"{groups} groups of {per_group} is no shape of {num_heads} heads in {num_kv_heads} groups")
    members = [list(range(g * size, (g + 1) * size)) for g in range(num_kv_heads)]
    ranked = sorted(range(num_kv_heads), key=lambda g: (sum(scores[h] for h in members[g]), g))
    dropped = ranked[: num_kv_heads - groups]
    removed = [h for g in dropped for h in members[g]]
    for g in sorted(set(range(num_kv_heads)) - set(dropped)):
        by_score = sorted(members[g], key=lambda h: (scores[h], h))
        removed += by_score[: size - per_group]
    return sorted(removed)


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
    # deferred: bitsandbytes is x86-only (see the prune extra) and only nf4 scoring needs it
    from bitsandbytes.functional import dequantize_4bit, quantize_4bit

    for module in layer.modules():
        if isinstance(module, nn.Linear):
            weight = module.weight.data
            packed, state = quantize_4bit(weight.float().contiguous(), quant_type="nf4")
            module.weight.data = dequantize_4bit(packed, state).to(weight.dtype)
    return layer


# Rows of logits computed at once for the NLL: 256 x vocab float32 (50 MB for a 49k vocab)
# instead of batch x tokens x vocab, plus cross-entropy's copy of it.
NLL_ROWS = 256
# The memory budget of loo-nll on the CPU, spent twice: on the activations of one forward
# of stacked ablated copies, and on the stacks held between layer loads. A CPU matmul is
# already efficient at a few thousand rows (one calibration batch), so more copies per
# forward buy little speed and only cost memory; the held stacks only set how often the
# layers are read again, which costs little next to the compute (one layer's weights per
# budget's worth of token copies). On an accelerator throughput keeps growing with the
# stack and reading layers again is dearer, so there the budget is a share of free memory.
CPU_BUDGET = 256 << 20


@dataclass
class _Stack:
    """Copies of one batch, stacked along the batch dimension: copy j (rows j*B..(j+1)*B-1)
    has the heads variants[j] masked in the scored layer."""

    batch: Batch
    variants: list[list[int]]
    first: int  # the index of variants[0] among all variants


def loo_nll_scores(
    stream: LayerStream,
    spec: LayerSpec,
    batches: list[Batch],
    *,
    quant: str | None = None,
    should_stop: StopCheck | None = None,
    budget: int | None = None,
) -> list[float]:
    """NLL(head masked) - NLL(nothing masked) per head, from layer spec.index's input stream.

    The variants (nothing masked, then each head alone) are run as stacks of ablated copies
    of each batch, as many copies per forward as `budget` bytes of activations allow. Stacks
    are gathered into working sets of at most `budget` bytes, and each working set goes
    layer-major: layers spec.index.. are loaded one at a time and run on its stacks. Memory
    is thus one layer, one working set and one forward's activations, whatever the size of
    the calibration set; the NLL is taken NLL_ROWS rows of logits at a time.

    SmolLM2-135M, float32 on a shared 2-core CPU (times rough), `surgeon prune` peak RSS:
    layers 0-1 on 1,036 tokens, 196 s CPU and 0.62 GB, vs 462 s and 0.74 GB for the
    layer-major version before (every variant's stream, full logits) and 24 s and 0.43 GB
    with recon; layer 27 on 8,192 tokens, 0.84 GB vs 1.45 GB (the logits dominate there,
    so the time is about the same).
    """
    variants: list[list[int]] = [[], *([h] for h in range(spec.num_heads))]
    budget = activation_budget(stream.device) if budget is None else budget
    totals = [0.0] * len(variants)
    for working in _working_sets(stream, spec, batches, variants, budget):
        for i in range(spec.index, len(stream.layout.layers)):
            check_stop(should_stop)
            layer = stream.load_layer(i)
            layer = nf4_round_trip(layer) if quant == "nf4" else layer
            for stack in working:
                check_stop(should_stop)
                stack.batch.hidden = _run(stream, layer, i, stack, spec)
            del layer
        for stack in working:
            for offset, value in enumerate(_stack_nll(stream, stack)):
                totals[stack.first + offset] += value
    count = sum(int((b.attention_mask[:, 1:] & b.attention_mask[:, :-1]).sum()) for b in batches)
    nll = [total / max(count, 1) for total in totals]
    return [value - nll[0] for value in nll[1:]]


def _working_sets(stream, spec, batches: list[Batch], variants: list[list[int]], budget: int):
    """Lists of stacks of at most `budget` bytes held (one stack at least), made as needed."""
    working: list[_Stack] = []
    held = 0
    layers = range(spec.index, len(stream.layout.layers))
    for batch in batches:
        group = copies_per_forward(stream, batch, budget, len(variants))
        for first in range(0, len(variants), group):
            part = variants[first : first + group]
            stack = _Stack(stack_batch(batch, len(part), layers, stream.device), part, first)
            size = held_bytes(stack.batch)
            if working and held + size > budget:
                yield working
                working, held = [], 0
            working.append(stack)
            held += size
    if working:
        yield working


def _run(stream: LayerStream, layer: nn.Module, index: int, stack: _Stack, spec: LayerSpec) -> torch.Tensor:
    if index != spec.index:
        return stream.run_layer(layer, index, stack.batch)
    rows = stack.batch.input_ids.shape[0] // len(stack.variants)
    o_proj = layer.get_submodule("self_attn.o_proj")
    handle = o_proj.register_forward_pre_hook(_mask_copies(stack.variants, rows, spec.head_dim))
    try:
        return stream.run_layer(layer, index, stack.batch)
    finally:
        handle.remove()


def _stack_nll(stream: LayerStream, stack: _Stack) -> list[float]:
    """Summed NLL over real tokens of each copy in the stack."""
    rows = stack.batch.input_ids.shape[0] // len(stack.variants)
    hidden = stack.batch.hidden
    assert hidden is not None  # a stack is built from a traced batch, which has its stream
    copies = hidden.reshape(len(stack.variants), rows, *hidden.shape[1:])
    ids, mask = stack.batch.input_ids[:rows], stack.batch.attention_mask[:rows]
    return [_nll_sum(stream, h, ids, mask) for h in copies]


def activation_budget(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(CPU_BUDGET, free // 4)
    return CPU_BUDGET


def copies_per_forward(stream: LayerStream, batch: Batch, budget: int, variants: int) -> int:
    """How many ablated copies of `batch` one layer forward may carry within `budget` bytes."""
    return max(1, min(variants, budget // copy_bytes(stream, batch)))


def copy_bytes(stream: LayerStream, batch: Batch) -> int:
    """About the peak activation bytes one copy of `batch` adds to a decoder layer forward.

    Per token: the residual stream, its norm, the attention output and o_proj's (4 x hidden);
    q, k, v and the attention output (4 x the widest heads x head_dim); the MLP's gate, up
    and their product (3 x intermediate); the attention scores and their softmax (2 x heads
    x tokens: sdpa's math kernel with a mask); and the stacked masks (a byte per key, two
    masks: sliding and full)."""
    config = stream.layout.config
    hidden = int(config.get("hidden_size") or 0)
    inter = int(config.get("intermediate_size") or 4 * hidden)
    heads = max(s.num_heads for s in stream.layout.layers)
    attn = max(s.num_heads * s.head_dim for s in stream.layout.layers)
    rows, width = batch.input_ids.shape
    floats = 4 * hidden + 4 * attn + 3 * inter + 2 * heads * width
    return max(1, rows * width * (floats * stream.dtype.itemsize + 2 * width))


def stack_batch(batch: Batch, copies: int, layers: range, device: torch.device) -> Batch:
    """`batch` repeated `copies` times along the batch dimension, with the recorded arguments
    of `layers` to match: every tensor whose leading dimension is the batch size is repeated
    (masks, per-layer inputs, kv shared between layers; nested in tuples and mappings too),
    the others (rotary tables and positions of shape 1 x tokens) broadcast as they are. A
    mapping is copied, once for all layers that share it: a layer that stores keys and values
    for later ones writes into the stack's own copy, never into the batch's."""
    rows = batch.input_ids.shape[0]
    memo: dict[int, object] = {}

    def stacked(value):
        if id(value) in memo:
            return memo[id(value)]
        if isinstance(value, torch.Tensor):
            out = value.repeat(copies, *[1] * (value.dim() - 1)) if value.dim() and value.shape[0] == rows else value
        elif isinstance(value, tuple | list):
            out = type(value)(stacked(v) for v in value)
        elif isinstance(value, MutableMapping):
            out = copy.copy(value)
            for key in list(out.keys()):
                out[key] = stacked(value[key])
        else:
            out = value
        memo[id(value)] = out
        return out

    args = {i: (stacked(batch.layer_args[i][0]), stacked(batch.layer_args[i][1])) for i in layers}
    ids, mask = batch.input_ids.repeat(copies, 1), batch.attention_mask.repeat(copies, 1)
    assert batch.hidden is not None  # only traced batches are stacked
    return Batch(ids, mask, stacked(batch.hidden.to(device)), args)


def held_bytes(batch: Batch) -> int:
    """Bytes of the tensors a (stacked) batch holds: its stream and its layer arguments."""
    seen: dict[int, int] = {}

    def walk(value):
        if isinstance(value, torch.Tensor):
            seen[id(value)] = value.nbytes
        elif isinstance(value, tuple | list):
            for item in value:
                walk(item)
        elif isinstance(value, MutableMapping):
            for item in value.values():
                walk(item)

    walk((batch.hidden, batch.input_ids, batch.attention_mask, batch.layer_args))
    return sum(seen.values())


def _mask_copies(variants: list[list[int]], rows: int, head_dim: int):
    """Zero o_proj's input of copy j's heads, in copy j's rows only."""

    def hook(module, args):
        x = args[0].clone()
        for copy_index, heads in enumerate(variants):
            for head in heads:
                x[copy_index * rows : (copy_index + 1) * rows, ..., head * head_dim : (head + 1) * head_dim] = 0
        return (x, *args[1:])

    return hook


@torch.no_grad()
def _nll_sum(stream: LayerStream, hidden: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """Summed next-token NLL over real tokens (what stream.nll sums), NLL_ROWS logits rows at a time."""
    valid = (attention_mask[:, 1:] & attention_mask[:, :-1]).bool().to(hidden.device)
    rows = hidden[:, :-1][valid]
    targets = input_ids[:, 1:].to(hidden.device)[valid]
    total = 0.0
    for first in range(0, rows.shape[0], NLL_ROWS):
        logits = stream.logits(rows[first : first + NLL_ROWS]).float()
        total += float(nn.functional.cross_entropy(logits, targets[first : first + NLL_ROWS], reduction="sum"))
    return total
