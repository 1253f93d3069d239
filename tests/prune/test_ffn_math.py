"""FFN channel importance and the down_proj heal against direct computations on token
matrices (surgeon.prune.ffn works from G = A^T A alone)."""

from __future__ import annotations

import pytest
import torch

from surgeon.prune.ffn import (
    FfnInput,
    channels_to_prune,
    flap_scores,
    heal_down,
    obs_scores,
    obs_select,
    select_channels,
    wanda_scores,
)
from surgeon.prune.heal import refit


def _job(acts: torch.Tensor, weight: torch.Tensor, ridge_rel: float = 0.0) -> FfnInput:
    return FfnInput(weight, acts.T @ acts, acts.sum(dim=0), acts.shape[0], ridge_rel, torch.device("cpu"))


def _data(tokens=400, width=16, hidden=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    acts = torch.randn(tokens, width, generator=gen, dtype=torch.float64)
    weight = torch.randn(hidden, width, generator=gen, dtype=torch.float64)
    return acts, weight


def test_channels_to_prune_rounds_and_keeps_one():
    assert channels_to_prune(0.1, 1536) == 154  # 1382 kept: the intermediate_size
    assert channels_to_prune(0.0, 64) == 0
    assert channels_to_prune(0.999, 4) == 3


def test_refit_of_every_channel_is_the_identity():
    acts, weight = _data()
    kept = torch.arange(weight.shape[1])
    columns, stats = refit(weight, acts.T @ acts, kept, 0.0)
    assert torch.allclose(columns, weight, atol=1e-10, rtol=0)
    assert stats.rel_residual < 1e-6


@pytest.mark.parametrize("heal", ["lstsq", "anchored", "none"])
def test_removing_nothing_changes_nothing(heal):
    acts, weight = _data()
    bias = torch.randn(weight.shape[0], dtype=torch.float64)
    done = heal_down(_job(acts, weight, 0.01), [], heal, bias)
    assert torch.equal(done.weight, weight) and done.bias is not None and torch.equal(done.bias, bias)


def test_channels_that_are_combinations_of_kept_ones_heal_to_zero_residual():
    acts, weight = _data()
    acts[:, 3] = 0.5 * acts[:, 0] - 2.0 * acts[:, 5]
    acts[:, 9] = acts[:, 1] + acts[:, 2] + acts[:, 11]
    done = heal_down(_job(acts, weight), [3, 9], "lstsq", None)
    assert done.refit is not None and done.refit["rel_residual"] < 1e-6
    assert torch.all(done.weight[:, [3, 9]] == 0)
    assert torch.allclose(acts @ done.weight.T, acts @ weight.T, atol=1e-9)


def test_heal_none_zeroes_only():
    acts, weight = _data()
    done = heal_down(_job(acts, weight), [2, 4], "none", None)
    expected = weight.clone()
    expected[:, [2, 4]] = 0
    assert torch.equal(done.weight, expected) and done.refit is None and done.bias is None


def test_a_bias_absorbs_a_constant_channel_in_the_refit():
    acts, weight = _data()
    acts[:, 6] = 3.0 + 0.25 * acts[:, 1]  # a constant plus a kept channel: only the bias can carry the 3
    bias = torch.randn(weight.shape[0], dtype=torch.float64)
    done = heal_down(_job(acts, weight), [6], "lstsq", bias)
    assert done.bias is not None and done.refit is not None and done.refit["rel_residual"] < 1e-6
    assert torch.allclose(acts @ done.weight.T + done.bias, acts @ weight.T + bias, atol=1e-9)
    without = heal_down(_job(acts, weight), [6], "lstsq", None)
    assert without.refit is not None and without.refit["rel_residual"] > 1e-3


def test_heal_none_with_a_bias_keeps_the_mean_output():
    """FLAP's compensation: the removed channels' mean output moves into the bias."""
    acts, weight = _data()
    acts += torch.linspace(-1, 2, acts.shape[1], dtype=torch.float64)  # channels with means
    bias = torch.zeros(weight.shape[0], dtype=torch.float64)
    done = heal_down(_job(acts, weight), [0, 7, 15], "none", bias)
    assert done.bias is not None
    before = (acts @ weight.T + bias).mean(dim=0)
    after = (acts @ done.weight.T + done.bias).mean(dim=0)
    assert torch.allclose(before, after, atol=1e-9)


def test_wanda_and_flap_by_their_definitions():
    acts, weight = _data()
    acts += torch.arange(acts.shape[1], dtype=torch.float64)
    job = _job(acts, weight)
    norms = weight.norm(dim=0)
    assert torch.allclose(wanda_scores(job), norms * acts.norm(dim=0), rtol=1e-10)
    variance = acts.var(dim=0, unbiased=False)
    assert torch.allclose(flap_scores(job), variance * norms.square(), rtol=1e-8)


def _anchored_error(weight, hessian, kept):
    """min over B of tr((W - B~) H (W - B~)^T), B~ zero outside the kept columns, solved directly."""
    dropped = [j for j in range(weight.shape[1]) if j not in set(kept)]
    h_kk = hessian[kept][:, kept]
    delta_k = torch.linalg.solve(h_kk, hessian[kept][:, dropped] @ weight[:, dropped].T)  # the kept columns' update
    full = weight.clone()
    full[:, kept] += delta_k.T
    full[:, dropped] = 0
    error = weight - full
    return float(torch.einsum("oi,ij,oj->", error, hessian, error))


def test_obs_equals_brute_force_leave_one_out_on_a_64_wide_gram():
    acts, weight = _data(tokens=600, width=64, hidden=12, seed=3)
    gram = acts.T @ acts
    ridge_rel = 0.01
    hessian = gram + ridge_rel * float(torch.diagonal(gram).mean()) * torch.eye(64, dtype=torch.float64)
    brute = torch.tensor(
        [_anchored_error(weight, hessian, [k for k in range(64) if k != j]) for j in range(64)], dtype=torch.float64
    )
    assert torch.allclose(obs_scores(weight, gram, ridge_rel), brute, rtol=1e-8)


def test_obs_greedy_downdates_equal_re_solving_from_scratch():
    acts, weight = _data(tokens=600, width=64, hidden=12, seed=4)
    gram = acts.T @ acts
    ridge_rel = 0.01
    hessian = gram + ridge_rel * float(torch.diagonal(gram).mean()) * torch.eye(64, dtype=torch.float64)
    removed, errors = obs_select(weight, gram, 6, ridge_rel)
    # brute force: at each step, the channel whose removal (with all removed so far) costs least
    gone: list[int] = []
    total = 0.0
    for step in range(6):
        costs = {
            j: _anchored_error(weight, hessian, [k for k in range(64) if k not in set(gone) | {j}])
            for j in range(64)
            if j not in gone
        }
        best = min(costs, key=lambda j: (costs[j], j))
        assert errors[step] == pytest.approx(costs[best] - total, rel=1e-6)
        total = costs[best]
        gone.append(best)
    assert removed == sorted(gone)


def test_select_channels_breaks_ties_to_the_lower_index():
    assert select_channels(torch.tensor([1.0, 0.0, 0.0, 2.0, 0.0]), 2) == [1, 2]


@pytest.mark.parametrize("heal", ["lstsq", "anchored"])
def test_the_ridge_leaves_the_bias_alone_whatever_the_activations_scale(heal):
    """The bias is the weight of a constant column: the ridge (relative to the channels' G)
    must not shrink it, nor the column's N inflate the weights' ridge. The same MLP with its
    activations scaled by s and down_proj by 1/s is healed to the same outputs; the bias was
    pulled from 5 to 0.46 (lstsq, s = 10), and the weights' ridge grew 7-fold at s = 0.1."""
    acts, weight = _data()
    bias = torch.full((weight.shape[0],), 5.0, dtype=torch.float64)
    outputs = []
    for scale in (0.1, 1.0, 10.0):
        a, w = acts * scale, weight / scale
        done = heal_down(_job(a, w, 0.1), [3], heal, bias)
        assert done.bias is not None
        outputs.append(a @ done.weight.T + done.bias)
    for other in outputs[1:]:
        torch.testing.assert_close(other, outputs[0], rtol=1e-9, atol=1e-9)
    assert float((outputs[0] - (acts @ weight.T + bias)).mean(dim=0).abs().max()) < 1e-9  # the mean output kept


def test_obs_without_a_ridge_removes_a_dead_or_duplicated_channel_first():
    """--ffn-ridge-rel 0 and a singular G: a channel never active, or the copy of another,
    costs nothing to remove. Through G's pseudo-inverse its P_jj was 0 and its score
    ||W_j||^2 / 0 the largest: it was kept, and the errors ran to 1e16."""
    acts, weight = _data()
    acts[:, 5] = 0
    assert obs_select(weight, acts.T @ acts, 1, 0.0)[0] == [5]
    acts, weight = _data()
    acts[:, 7] = acts[:, 2]
    removed, errors = obs_select(weight, acts.T @ acts, 1, 0.0)
    assert removed in ([2], [7]) and errors[0] < 1e-6
    few = _data(tokens=8)[0]  # 8 tokens, 16 channels
    removed, errors = obs_select(weight, few.T @ few, 10, 0.0)
    assert len(removed) == 10 and all(0 <= e < 1e6 for e in errors)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("importance", ["wanda", "flap", "obs"])
def test_channels_are_chosen_and_healed_with_g_on_the_device_and_down_proj_in_cpu_memory(importance):
    """As the engine holds them: down_proj read into CPU memory, G and sum(a) captured on the
    GPU. wanda and flap multiplied the two (a device mismatch), and heal none's bias
    compensation did too."""
    from surgeon.prune.ffn import choose

    acts, weight = _data()
    cuda = torch.device("cuda")
    gram, sums = (acts.T @ acts).to(cuda), acts.sum(dim=0).to(cuda)
    job = FfnInput(weight, gram, sums, acts.shape[0], 0.1, cuda)
    removed = choose(importance, job, 4)
    assert len(removed) == 4
    bias = torch.randn(weight.shape[0], dtype=torch.float64)
    for heal in ("none", "lstsq", "anchored"):
        done = heal_down(job, removed, heal, bias)
        assert done.weight.device.type == "cpu" and done.bias is not None and done.bias.device.type == "cpu"
