"""Least-squares o_proj heal and head scores from the Gram matrix G = X^T X alone.

X (tokens x heads*head_dim) is o_proj's input on the calibration set and W (out x in) its
weight, so the layer's attention output is Y = X W^T. Removing heads keeps columns K of X;
the heal refits W_K' = W G[:, K] (G[K, K] + lambda I)^-1, the ridge least-squares solution of
min ||X W^T - X_K W_K'^T||^2 + lambda ||W_K'||^2 with lambda = ridge_rel * mean(diag G[K, K]).
Every quantity below needs G and W only: no token-sized buffer is kept.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class RefitStats:
    rel_residual: float  # ||X W^T - X_K W_K'^T|| / ||X W^T||
    target_rms: float  # RMS of X W^T over tokens and outputs
    ridge: float  # the lambda used
    condition: float  # estimate of cond(G[K, K] + lambda I) from the Cholesky diagonal: a lower bound
    solver: str  # "cholesky" or "eigh" (the fallback for a matrix that is not positive definite)


def _inner(a: torch.Tensor, b: torch.Tensor) -> float:
    """sum(a * b) without an a-sized temporary."""
    return float(torch.dot(a.reshape(-1), b.reshape(-1)))


def head_columns(heads: list[int], head_dim: int) -> torch.Tensor:
    return (
        torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in heads])
        if heads
        else torch.empty(0, dtype=torch.long)
    )


def _solve_spd(matrix: torch.Tensor, rhs: torch.Tensor) -> tuple[torch.Tensor, str, float]:
    """matrix^-1 rhs for a symmetric positive semi-definite matrix, with its condition number."""
    factor, info = torch.linalg.cholesky_ex(matrix)
    if int(info) == 0:
        diag = torch.diagonal(factor)
        condition = float((diag.max() / diag.min()) ** 2) if float(diag.min()) > 0 else math.inf
        return torch.cholesky_solve(rhs, factor), "cholesky", condition
    values, vectors = torch.linalg.eigh(matrix)
    floor = values.max() * torch.finfo(matrix.dtype).eps * matrix.shape[0]
    inverse = torch.where(values > floor, 1.0 / values, torch.zeros_like(values))
    condition = float(values.max() / values[values > floor].min()) if bool((values > floor).any()) else math.inf
    return vectors @ (inverse[:, None] * (vectors.T @ rhs)), "eigh", condition


def refit(
    weight: torch.Tensor, gram: torch.Tensor, kept: torch.Tensor, ridge_rel: float, tokens: int = 0, anchored=False
):
    """(W_K' in float64, RefitStats): the healed o_proj columns for kept input columns K.

    `anchored`: the ridge pulls W_K' toward the kept columns as they were, W_K, instead of
    toward zero: min ||X W^T - X_K B||^2 + lambda ||B - W_K^T||^2, solved by
    (G_KK + lambda I) B = G[K, :] W^T + lambda W_K^T. A direction of X_K that the calibration
    text barely excites then keeps the base's weights rather than losing them, and lambda moves
    between the full heal (0) and no heal (infinity) instead of toward a zero o_proj.

    `tokens` is how many rows X had; it only scales target_rms. Temporaries are reused so the
    peak stays near three width x width matrices.
    """
    w = weight.to(torch.float64)
    g = gram.to(torch.float64)
    system = g[kept][:, kept]  # becomes G_KK + lambda I, in place
    ridge = ridge_rel * float(torch.diagonal(system).mean()) if kept.numel() else 0.0
    system.diagonal().add_(ridge)
    data = g[kept] @ w.T  # G[K, :] W^T, |K| x out
    rhs = data + ridge * w[:, kept].T if anchored else data
    solution, solver, condition = _solve_spd(system, rhs)  # W_K'^T
    target = _inner(w @ g, w)  # ||X W^T||^2 = tr(W G W^T)
    cross = _inner(solution, data)  # tr(B^T G[K, :] W^T)
    # ||X_K B||^2 = tr(B^T (G_KK + lambda I) B) - lambda ||B||^2, and (G_KK + lambda I) B = rhs
    fitted = _inner(solution, rhs) - ridge * _inner(solution, solution)
    del rhs, data
    residual = max(target - 2 * cross + fitted, 0.0)
    stats = RefitStats(
        rel_residual=math.sqrt(residual / target) if target > 0 else 0.0,
        target_rms=math.sqrt(target / (tokens * w.shape[0])) if tokens and target > 0 else 0.0,
        ridge=ridge,
        condition=condition,
        solver=solver,
    )
    return solution.T.contiguous(), stats


def heal_o_proj(
    weight: torch.Tensor,
    gram: torch.Tensor,
    pruned: list[int],
    head_dim: int,
    ridge_rel: float,
    tokens: int = 0,
    out_dtype: torch.dtype | None = None,
    anchored: bool = False,
):
    """The full healed o_proj (pruned heads' columns zero) in out_dtype (default float64),
    and its RefitStats."""
    num_heads = weight.shape[1] // head_dim
    kept_heads = [h for h in range(num_heads) if h not in set(pruned)]
    kept = head_columns(kept_heads, head_dim).to(weight.device)
    columns, stats = refit(weight, gram, kept, ridge_rel, tokens, anchored)
    healed = torch.zeros(weight.shape, dtype=out_dtype or torch.float64, device=weight.device)
    healed[:, kept] = columns.to(healed.dtype)
    return healed, stats


@dataclass(frozen=True)
class HealInput:
    """One layer's o_proj (as stored), the heads removed and what a refit needs."""

    weight: torch.Tensor
    gram: torch.Tensor
    heads: list[int]
    head_dim: int
    ridge_rel: float
    tokens: int
    device: torch.device


def _lstsq(job: HealInput, anchored: bool = False) -> tuple[torch.Tensor, dict | None]:
    if not job.heads:  # nothing removed: nothing to refit
        return _zero(job)
    weight = job.weight.to(job.device)
    healed, stats = heal_o_proj(
        weight, job.gram, job.heads, job.head_dim, job.ridge_rel, job.tokens, job.weight.dtype, anchored
    )
    return healed.cpu(), asdict(stats)


def _anchored(job: HealInput) -> tuple[torch.Tensor, dict | None]:
    return _lstsq(job, anchored=True)


def _zero(job: HealInput) -> tuple[torch.Tensor, dict | None]:
    masked = job.weight.clone()
    masked[:, head_columns(job.heads, job.head_dim)] = 0
    return masked, None


# The heal methods by name, (new o_proj, refit stats or None): the names are owned by
# surgeon.prune.options.Heal; tests/prune/test_registries.py holds the two in step.
HEALERS: dict[str, Callable[[HealInput], tuple[torch.Tensor, dict | None]]] = {
    "lstsq": _lstsq,
    "anchored": _anchored,
    "none": _zero,
}


def norm_scores(weight: torch.Tensor, gram: torch.Tensor, head_dim: int) -> list[float]:
    """Each head's output energy ||X_h W_h^T||^2 = tr(W_h G_hh W_h^T)."""
    w, g = weight.to(torch.float64), gram.to(torch.float64)
    scores = []
    for h in range(w.shape[1] // head_dim):
        cols = slice(h * head_dim, (h + 1) * head_dim)
        scores.append(float(torch.einsum("oi,ij,oj->", w[:, cols], g[cols, cols], w[:, cols])))
    return scores


def recon_scores(weight: torch.Tensor, gram: torch.Tensor, head_dim: int, ridge_rel: float) -> list[float]:
    """Each head's heal-aware importance: sqrt(J_h / ||X W^T||^2), where J_h is the ridge
    objective ||X W^T - X_K B||^2 + lambda ||B||^2 left after removing head h alone and
    refitting the others (lambda from the whole G, the same for every head).

    One Cholesky of M = G + lambda I serves every head: with P = M^-1 and K = all but head
    h's columns H, (M_KK)^-1 = P_KK - P_KH P_HH^-1 P_HK, so each head costs head_dim^2 work.
    """
    a = weight.to(torch.float64).T  # in x out
    g = gram.to(torch.float64)
    n = g.shape[0]
    ridge = ridge_rel * float(torch.diagonal(g).mean())
    m = g + ridge * torch.eye(n, dtype=torch.float64, device=g.device)
    factor, info = torch.linalg.cholesky_ex(m)
    p = torch.cholesky_inverse(factor) if int(info) == 0 else torch.linalg.pinv(m, hermitian=True)
    del m, factor  # width^2 each: keep the peak at G, P and two width x out products
    q = g @ a  # G A
    r = p @ q  # P G A
    target = _inner(a, q)  # tr(A^T G A)
    explained_all = _inner(q, r)  # tr(Q^T P Q)
    scores = []
    for h in range(n // head_dim):
        cols = slice(h * head_dim, (h + 1) * head_dim)
        s = r[cols] - p[cols, cols] @ q[cols]  # P_HK Q_K
        explained = explained_all - float((q[cols] * r[cols]).sum()) - float((s * q[cols]).sum())
        explained -= float((s * torch.linalg.solve(p[cols, cols], s)).sum())
        objective = max(target - explained, 0.0)
        scores.append(math.sqrt(objective / target) if target > 0 else 0.0)
    return scores


def ridge_objective(weight: torch.Tensor, gram: torch.Tensor, kept: torch.Tensor, ridge: float) -> float:
    """J(K) = ||X W^T - X_K B||^2 + ridge ||B||^2 at the optimal B, computed directly (for tests)."""
    a = weight.to(torch.float64).T
    g = gram.to(torch.float64)
    system = g[kept][:, kept] + ridge * torch.eye(kept.numel(), dtype=torch.float64)
    b = torch.linalg.solve(system, g[kept] @ a)
    residual = (
        float((a * (g @ a)).sum()) - 2 * float((b * (g[kept] @ a)).sum()) + float((b * (g[kept][:, kept] @ b)).sum())
    )
    return residual + ridge * float((b * b).sum())
