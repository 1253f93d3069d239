"""FFN channel pruning: channel importance and the down_proj heal from G = A^T A alone.

A (tokens x channels) is down_proj's input, act(gate_proj(x)) * up_proj(x), and W (hidden x
channels) its weight, so the MLP's output is A W^T. Removing channel j removes gate and up
row j and down column j. The heal refits the kept columns of W from G exactly as
heal.refit refits o_proj's columns from the attention output's G: the same ridge least
squares, one column per channel instead of head_dim per head.

Importance, lower is removed first:
- wanda: ||W[:, j]|| sqrt(G_jj), the channel's weight norm times its input's RMS (Wanda-sp).
- flap: Var(a_j) ||W[:, j]||^2, FLAP's fluctuation metric: a channel that is nearly
  constant carries its mean only, which a bias (or the heal) absorbs. Needs sum(a) too.
- obs: the Optimal Brain Surgeon error ||W[:, j]||^2 / [(G + lambda I)^-1]_jj of removing j
  and re-solving the others (the anchored heal's objective), removed greedily, the inverse
  and W downdated by rank one after each removal.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch

from surgeon.prune.heal import refit


def channels_to_prune(fraction: float, width: int) -> int:
    """round(fraction x width), leaving at least one channel: 10% of SmolLM2's 1536 is 154."""
    return max(0, min(round(fraction * width), width - 1))


@dataclass(frozen=True)
class FfnInput:
    """One layer's down_proj (as stored), its input's G and column sums, and what the
    importance and heal need."""

    weight: torch.Tensor  # hidden x channels
    gram: torch.Tensor  # channels x channels, sum over tokens of a a^T
    sums: torch.Tensor  # channels, sum over tokens of a
    tokens: int
    ridge_rel: float
    device: torch.device


def _ridge(gram: torch.Tensor, ridge_rel: float) -> float:
    return ridge_rel * float(torch.diagonal(gram).mean())


def _column_energy(weight: torch.Tensor) -> torch.Tensor:
    return weight.to(torch.float64).square().sum(dim=0)


def wanda_scores(job: FfnInput) -> torch.Tensor:
    energy = torch.diagonal(job.gram).to(torch.float64).clamp(min=0)
    return (_column_energy(job.weight) * energy).sqrt()


def flap_scores(job: FfnInput) -> torch.Tensor:
    mean = job.sums.to(torch.float64) / max(job.tokens, 1)
    second = torch.diagonal(job.gram).to(torch.float64) / max(job.tokens, 1)
    return (second - mean.square()).clamp(min=0) * _column_energy(job.weight)


def obs_scores(weight: torch.Tensor, gram: torch.Tensor, ridge_rel: float) -> torch.Tensor:
    """Each channel's OBS error alone: ||W[:, j]||^2 / P_jj with P = (G + lambda I)^-1."""
    inverse = _inverse(gram.to(torch.float64), _ridge(gram, ridge_rel))
    return _column_energy(weight) / torch.diagonal(inverse)


def _inverse(gram: torch.Tensor, ridge: float) -> torch.Tensor:
    """(G + lambda I)^-1. Where that is singular (the ridge 0, a channel never active or the
    copy of another), the limit lambda -> 0 is taken at a jitter of 1e-12 to 1e-6 of G's mean
    diagonal: such a channel's P_jj is then huge and its OBS error near zero, as it is; G's
    pseudo-inverse gave it P_jj = 0 and the largest error."""
    scale = float(torch.diagonal(gram).mean()) or 1.0
    for jitter in (0.0, 1e-12, 1e-9, 1e-6):
        system = gram.clone()
        system.diagonal().add_(ridge + jitter * scale)
        factor, info = torch.linalg.cholesky_ex(system)
        if int(info) == 0:
            return torch.cholesky_inverse(factor)
    return torch.linalg.pinv(system, hermitian=True)


def obs_select(weight: torch.Tensor, gram: torch.Tensor, count: int, ridge_rel: float) -> tuple[list[int], list[float]]:
    """`count` channels removed greedily by OBS, each step the one whose removal (with the
    others re-solved) adds the least error, and the error each added. After removing j,
    P <- P - P[:, j] P[j, :] / P_jj is the inverse over the channels left (Schur complement)
    and W <- W - W[:, j] P[j, :] / P_jj their re-solved weights: no refactorisation."""
    work = weight.to(torch.float64).clone()
    inverse = _inverse(gram.to(torch.float64), _ridge(gram, ridge_rel))
    alive = torch.ones(inverse.shape[0], dtype=torch.bool, device=inverse.device)
    removed: list[int] = []
    errors: list[float] = []
    for _ in range(count):
        diag = torch.diagonal(inverse)
        score = torch.where(alive, work.square().sum(dim=0) / diag.clamp(min=torch.finfo(diag.dtype).tiny), math.inf)
        j = int(torch.argmin(score))  # the first of equals: ties go to the lower index
        removed.append(j)
        errors.append(float(score[j]))
        pivot = float(inverse[j, j])
        row = inverse[j].clone()
        work.sub_(torch.outer(work[:, j], row / pivot))
        inverse.sub_(torch.outer(row, row / pivot))
        alive[j] = False
    return sorted(removed), errors


def select_channels(scores: torch.Tensor, count: int) -> list[int]:
    """The `count` lowest-scoring channels; ties go to the lower index."""
    order = sorted(range(scores.numel()), key=lambda j: (float(scores[j]), j))
    return sorted(order[:count])


def choose(importance: str, job: FfnInput, count: int) -> list[int]:
    """The channels to remove by the named importance, scored on `job.device`: the engine's
    down_proj is read into CPU memory while G and sum(a) are captured on the device."""
    if importance == "obs":
        return obs_select(job.weight.to(job.device), job.gram.to(job.device), count, job.ridge_rel)[0]
    placed = replace(job, weight=job.weight.to(job.device), gram=job.gram.to(job.device), sums=job.sums.to(job.device))
    return select_channels(SCORERS[importance](placed).cpu(), count)


# The channel importances by name (obs has its own greedy loop, in choose): the names are
# owned by surgeon.prune.options.FfnImportance; tests/prune/test_registries.py holds them in step.
SCORERS: dict[str, Callable[[FfnInput], torch.Tensor]] = {
    "wanda": wanda_scores,
    "flap": flap_scores,
    "obs": lambda job: obs_scores(job.weight, job.gram, job.ridge_rel),
}


@dataclass(frozen=True)
class FfnHeal:
    """down_proj rewritten (removed columns zero), its bias where it has one, and the refit's
    stats (None for heal none)."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    refit: dict | None


def heal_down(job: FfnInput, removed: list[int], heal: str, bias: torch.Tensor | None) -> FfnHeal:
    """down_proj with `removed` channels gone, healed by `heal` (lstsq, anchored or none).

    With a bias (mlp_bias), the lstsq heals fit it too, as the unpenalised weight of a
    constant input column: the kept columns are refit on the centred G (G - s s^T / N, the
    ridge relative to its diagonal) and the bias takes the mean output they leave, so the
    ridge neither shrinks the bias nor grows with N, and the heal is the same whatever the
    activations' scale. Heal none adds the removed channels' mean output to the bias (FLAP's
    bias compensation). Without one, only the kept channels can absorb the removed
    channels' mean, through the refit."""
    width = job.weight.shape[1]
    kept = torch.tensor([j for j in range(width) if j not in set(removed)], dtype=torch.long)
    out_dtype = job.weight.dtype
    if heal == "none" or not removed:
        weight = job.weight.clone()
        weight[:, removed] = 0
        new_bias = None if bias is None else _compensated(job, removed, bias)
        return FfnHeal(weight, new_bias, None)
    w = job.weight.to(job.device, torch.float64)
    gram = job.gram.to(job.device, torch.float64)
    index = kept.to(job.device)
    if bias is not None:  # the intercept, unpenalised: the weights fit to the centred data
        mean = job.sums.to(job.device, torch.float64) / max(job.tokens, 1)
        gram = gram - torch.outer(mean, mean) * max(job.tokens, 1)
    columns, stats = refit(w, gram, index, job.ridge_rel, job.tokens, anchored=heal == "anchored")
    healed = torch.zeros(job.weight.shape, dtype=torch.float64, device=job.device)
    healed[:, index] = columns
    if bias is None:
        return FfnHeal(healed.to(out_dtype).cpu(), None, asdict(stats))
    # the mean output kept: b' = b + W mean(a) - W_K' mean(a_K)
    shifted = bias.to(job.device, torch.float64) + w @ mean - columns @ mean[index]
    return FfnHeal(healed.to(out_dtype).cpu(), shifted.to(bias.dtype).cpu(), asdict(stats))


def _compensated(job: FfnInput, removed: list[int], bias: torch.Tensor) -> torch.Tensor:
    """FLAP's compensation: the removed channels' mean output, W[:, R] mean(a_R), into the bias."""
    mean = job.sums.to("cpu", torch.float64)[removed] / max(job.tokens, 1)  # the weight is in CPU memory
    shift = job.weight.to("cpu", torch.float64)[:, removed] @ mean
    return (bias.to("cpu", torch.float64) + shift).to(bias.dtype)
