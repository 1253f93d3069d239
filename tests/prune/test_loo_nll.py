"""loo-nll importance: batch-major, variants stacked along the batch, NLL in row chunks; the
scores must equal the layer-major algorithm it replaced (kept below as the reference)."""

import math

import pytest
import torch

from surgeon.demo import DEMO_MODEL
from surgeon.errors import Cancelled
from surgeon.format.checkpoint import open_checkpoint
from surgeon.model.families import model_layout
from surgeon.prune import importance
from surgeon.prune.importance import (
    copy_bytes,
    held_bytes,
    loo_nll_scores,
    mask_heads_hook,
    nf4_round_trip,
    stack_batch,
)
from surgeon.runtime.stream import LayerStream, make_batches
from tests.tiny_models import save_tiny

TRAINED = DEMO_MODEL


def reference_loo_nll(stream, spec, batches, quant, should_stop=None):
    """The layer-major implementation loo_nll_scores had before (every variant's stream of the
    whole calibration set kept through every later layer, the NLL on full logits)."""
    index, num_layers = spec.index, len(stream.layout.layers)

    def load(i):
        layer = stream.load_layer(i)
        return nf4_round_trip(layer) if quant == "nf4" else layer

    variants = [[], *([h] for h in range(spec.num_heads))]
    layer = load(index)
    streams = []
    for heads in variants:
        handle = mask_heads_hook(layer.self_attn.o_proj, heads, spec.head_dim)
        streams.append([stream.run_layer(layer, index, b) for b in batches])
        handle.remove()
    del layer
    for later in range(index + 1, num_layers):
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


def traced(path, vocab: int, count=11, batch_size=4, seed=0):
    """A float32 CPU stream of `path` and traced, right-padded batches of sequences of 3 to 24
    tokens (BOS 2 first; longer than Gemma's sliding window of 16), the last batch smaller."""
    ckpt = open_checkpoint(path)
    stream = LayerStream(ckpt, model_layout(ckpt), torch.device("cpu"), torch.float32)
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 25, (count,), generator=generator).tolist()
    sequences = [[2, *torch.randint(3, vocab, (n - 1,), generator=generator).tolist()] for n in lengths]
    batches = make_batches(sequences, batch_size, pad_id=0)
    assert any(not bool(b.attention_mask.all()) for b in batches)  # padding is exercised
    for batch in batches:
        stream.trace(batch)
    return stream, batches


def budget_for(stream, batches, copies: int) -> int:
    """A budget that fits `copies` copies of the widest batch."""
    return copies * max(copy_bytes(stream, b) for b in batches)


@pytest.fixture(scope="module")
def gemma4():
    return traced(TRAINED, vocab=512)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    path = save_tiny("llama", tmp_path_factory.mktemp("llama") / "m")
    return traced(path, vocab=128)


@pytest.fixture(scope="module")
def gemma4_per_layer_inputs(tmp_path_factory):
    """Gemma 4 with per-layer inputs (a positional layer argument of batch x tokens x width),
    sliding and full layers of different head sizes: what the committed fixture lacks."""
    from transformers import AutoModelForCausalLM, Gemma4TextConfig

    config = Gemma4TextConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        global_head_dim=16,
        num_global_key_value_heads=1,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        sliding_window=4,
        hidden_size_per_layer_input=8,
        vocab_size_per_layer_input=128,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ple") / "m"
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    return traced(path, vocab=128)


@pytest.mark.parametrize("layer", [0, 5, 7])  # sliding; full (head_dim 16, 2 kv heads); the last layer
@pytest.mark.parametrize("copies", [1, 4, 9])  # one per forward; groups of 4, 4 and 1; all at once
def test_gemma4_scores_equal_the_layer_major_reference(gemma4, layer, copies):
    stream, batches = gemma4
    spec = stream.layout.layers[layer]
    expected = reference_loo_nll(stream, spec, batches, None)
    got = loo_nll_scores(stream, spec, batches, budget=budget_for(stream, batches, copies))
    assert len(got) == spec.num_heads
    assert max(map(abs, expected)) > 1e-3  # the heads matter: a comparison of zeros proves nothing
    torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), rtol=0, atol=1e-5)


@pytest.mark.parametrize("layer", [0, 2])
def test_llama_scores_equal_the_layer_major_reference(llama, layer):
    stream, batches = llama
    spec = stream.layout.layers[layer]
    expected = reference_loo_nll(stream, spec, batches, None)
    got = loo_nll_scores(stream, spec, batches, budget=budget_for(stream, batches, 2))
    assert max(map(abs, expected)) > 1e-4
    torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), rtol=0, atol=1e-5)


@pytest.mark.parametrize("layer", [0, 1])
def test_per_layer_inputs_scores_equal_the_layer_major_reference(gemma4_per_layer_inputs, layer):
    stream, batches = gemma4_per_layer_inputs
    assert stream.layout.layers[0].num_heads == 4 and batches[0].layer_args[0][0][0].shape[0] == 4
    spec = stream.layout.layers[layer]
    expected = reference_loo_nll(stream, spec, batches, None)
    got = loo_nll_scores(stream, spec, batches, budget=budget_for(stream, batches, 3))
    assert max(map(abs, expected)) > 1e-4
    torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), rtol=0, atol=1e-5)


def test_nf4_importance_runs_and_equals_the_reference(gemma4):
    pytest.importorskip("bitsandbytes")
    stream, batches = gemma4
    spec = stream.layout.layers[6]
    expected = reference_loo_nll(stream, spec, batches, "nf4")
    got = loo_nll_scores(stream, spec, batches, quant="nf4", budget=budget_for(stream, batches, 3))
    assert all(map(math.isfinite, got)) and got != loo_nll_scores(stream, spec, batches)
    torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), rtol=0, atol=1e-5)


def test_the_budget_sets_the_forwards(gemma4):
    """ceil(9 variants / copies) forwards of each layer from spec.index on, per batch: the
    budget, not a fixed number, decides how many copies share one forward."""
    stream, batches = gemma4
    spec = stream.layout.layers[4]
    widest = max(batches, key=lambda b: copy_bytes(stream, b))
    for copies, groups in ((1, 9), (2, 5), (4, 3), (9, 1), (50, 1)):
        budget = budget_for(stream, batches, copies)
        assert math.ceil(9 / importance.copies_per_forward(stream, widest, budget, 9)) == groups
        expected = sum(math.ceil(9 / importance.copies_per_forward(stream, b, budget, 9)) for b in batches)
        before = stream.forward_calls
        loo_nll_scores(stream, spec, batches, budget=budget)
        assert stream.forward_calls - before == expected * 4  # layers 4-7


def test_working_sets_hold_at_most_the_budget(gemma4):
    """The stacks held between layer loads stay within the budget: a calibration set larger
    than it is run in several working sets (each reading the layers again), same scores."""
    stream, batches = gemma4
    spec = stream.layout.layers[3]
    budget = budget_for(stream, batches, 1)
    variants = [[], *([h] for h in range(spec.num_heads))]
    sets = list(importance._working_sets(stream, spec, batches, variants, budget))
    assert len(sets) > 1
    assert all(sum(held_bytes(s.batch) for s in working) <= budget for working in sets)
    copies = [v for working in sets for s in working for v in s.variants]
    assert copies == variants * len(batches)  # every variant of every batch, once
    expected = reference_loo_nll(stream, spec, batches, None)
    torch.testing.assert_close(
        torch.tensor(loo_nll_scores(stream, spec, batches, budget=budget)),
        torch.tensor(expected),
        rtol=0,
        atol=1e-5,
    )


def test_cancel_is_honoured_between_layers(gemma4):
    stream, batches = gemma4
    spec = stream.layout.layers[2]
    checks = []

    def stop_after(n):
        def should_stop():
            checks.append(stream.forward_calls)
            return len(checks) > n

        return should_stop

    full = 10**9  # all 9 copies in one forward and the 3 batches' stacks in one working set
    loo_nll_scores(stream, spec, batches, should_stop=stop_after(10**6), budget=full)
    assert len(checks) == 6 * (1 + len(batches))  # before each of layers 2-7 is loaded and each forward
    checks.clear()
    before = stream.forward_calls
    with pytest.raises(Cancelled):
        loo_nll_scores(stream, spec, batches, should_stop=stop_after(2 * (1 + len(batches))), budget=full)
    assert stream.forward_calls - before == 2 * len(batches)  # layers 2 and 3 ran, layer 4 was not loaded


def test_nll_in_row_chunks_equals_the_full_logits_nll(gemma4, monkeypatch):
    stream, batches = gemma4
    monkeypatch.setattr(importance, "NLL_ROWS", 5)  # several chunks per sequence, one split mid-row
    layer = stream.load_layer(7)
    for batch in batches:
        hidden = stream.run_layer(layer, 7, batch)
        part, tokens = stream.nll(hidden, batch)
        assert tokens > 5
        chunked = importance._nll_sum(stream, hidden, batch.input_ids, batch.attention_mask)
        assert chunked == pytest.approx(part, rel=1e-6)


def test_stacking_repeats_per_batch_tensors_and_copies_shared_mappings():
    from transformers.cache_utils import KVSharingDict

    from surgeon.runtime.stream import Batch

    ids = torch.tensor([[2, 5, 6], [2, 7, 0]])
    kv = torch.arange(2 * 3.0).reshape(2, 3, 1)
    shared = KVSharingDict({"full_attention": (kv, kv)})
    rope = (torch.ones(1, 3, 4), torch.zeros(1, 3, 4))
    mask = torch.ones(2, 1, 3, 3, dtype=torch.bool)
    args = {
        i: ((None,), {"shared_kv_states": shared, "position_embeddings": rope, "attention_mask": mask}) for i in (0, 1)
    }
    batch = Batch(ids, torch.tensor([[1, 1, 1], [1, 1, 0]]), torch.randn(2, 3, 4), args)
    stacked = stack_batch(batch, 3, range(2), torch.device("cpu"))
    kwargs0, kwargs1 = stacked.layer_args[0][1], stacked.layer_args[1][1]
    assert stacked.hidden.shape == (6, 3, 4) and torch.equal(stacked.hidden[4:], batch.hidden)
    assert kwargs0["attention_mask"].shape == (6, 1, 3, 3)
    assert kwargs0["position_embeddings"][0] is rope[0]  # leading dim 1: broadcast as it is
    assert isinstance(kwargs0["shared_kv_states"], KVSharingDict)
    assert kwargs0["shared_kv_states"] is kwargs1["shared_kv_states"]  # still one mapping for all layers
    assert kwargs0["shared_kv_states"] is not shared
    assert torch.equal(kwargs0["shared_kv_states"]["full_attention"][0][2:4], kv)
    kwargs0["shared_kv_states"]["sliding_attention"] = (kv, kv)  # a layer of the stack stores its kv
    assert list(shared) == ["full_attention"]  # ... never into the batch's own mapping
    assert torch.equal(stacked.input_ids[2:4], ids) and stacked.attention_mask.shape == (6, 3)


def test_copy_bytes_grows_with_the_batch(gemma4):
    """Wider and taller batches take fewer copies per forward under the same budget."""
    from surgeon.runtime.stream import Batch

    stream, _ = gemma4
    small = Batch(torch.ones(2, 8, dtype=torch.long), torch.ones(2, 8, dtype=torch.long))
    tall = Batch(torch.ones(4, 8, dtype=torch.long), torch.ones(4, 8, dtype=torch.long))
    wide = Batch(torch.ones(2, 64, dtype=torch.long), torch.ones(2, 64, dtype=torch.long))
    assert copy_bytes(stream, tall) == 2 * copy_bytes(stream, small)
    assert copy_bytes(stream, wide) > 8 * copy_bytes(stream, small)  # attention scores grow with tokens^2
    assert importance.copies_per_forward(stream, small, 0, 9) == 1  # never fewer than one copy
    assert importance.copies_per_forward(stream, small, 10**12, 9) == 9  # never more than the variants
