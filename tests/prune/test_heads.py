"""How many heads a fraction prunes (issue 19, point 4): one rule, heads_to_prune, which the
engine selects by and the manifest, the CLI and the TUI's Prune form report. Torch-free."""

import pytest

from surgeon.demo import DEMO_MODEL
from surgeon.format.checkpoint import open_checkpoint
from surgeon.model.families import model_layout
from surgeon.prune.heads import HeadCount, counts_text, head_counts, heads_to_prune, rounding_warning


@pytest.mark.parametrize(
    ("fraction", "heads", "kv_heads", "pruned"),
    [
        (0.125, 4, 2, 1),  # half a head, rounded up: 25%
        (0.125, 9, 1, 1),  # 1.125 heads: 11.1%
        (0.25, 8, 2, 2),  # exact
        (0.0, 8, 2, 0),
        (0.3, 10, 2, 3),  # 3.0000000000000004 heads
        (0.1, 4, 2, 0),  # 0.4 of a head rounds to none
        (0.99, 8, 2, 6),  # every kv head keeps a query head
        (0.125, 4, 4, 0),  # multi-head attention: no query head is spare
    ],
)
def test_heads_to_prune(fraction, heads, kv_heads, pruned):
    assert heads_to_prune(fraction, heads, kv_heads) == pruned


@pytest.mark.parametrize(
    ("count", "text", "exact"),
    [
        (HeadCount((0,), 4, 0.125, 1), "1 of 4 (25%; asked 12.5%)", False),
        (HeadCount((0,), 9, 0.125, 1), "1 of 9 (11.1%; asked 12.5%)", False),
        (HeadCount((0,), 8, 0.25, 2), "2 of 8 (25%)", True),
        (HeadCount((0,), 10, 0.3, 3), "3 of 10 (30%)", True),
        (HeadCount((0,), 8, 0.0, 0), "0 of 8 (0%)", True),
        (HeadCount((0,), 4, 0.125, 0), "0 of 4 (0%; asked 12.5%; every kv head keeps one query head)", False),
    ],
)
def test_a_count_says_the_fraction_pruned_and_the_one_asked(count, text, exact):
    assert (count.text(), count.exact) == (text, exact)
    assert (rounding_warning([count]) is None) == exact


def test_layers_are_grouped_by_what_they_prune():
    """The demo model is Gemma-like: 8 query heads over 4 kv heads, or over 2 in its
    full-attention layers 5 and 7, whose cap is higher."""
    layers = model_layout(open_checkpoint(DEMO_MODEL)).layers
    assert [c.record() for c in head_counts(layers, range(8), 0.125, ())] == [
        {"layers": list(range(8)), "num_heads": 8, "heads_pruned": 1, "asked_frac": 0.125, "effective_frac": 0.125}
    ]
    capped = head_counts(layers, range(8), 0.9, ())
    assert [(c.layers, c.heads_pruned, c.capped) for c in capped] == [((0, 1, 2, 3, 4, 6), 4, True), ((5, 7), 6, True)]
    overridden = head_counts(layers, [0, 1, 5], 0.125, [(1, 0.3)])
    assert [(c.layers, c.asked_frac, c.heads_pruned) for c in overridden] == [((0, 5), 0.125, 1), ((1,), 0.3, 2)]
    assert counts_text(overridden) == (
        "1 of 8 query heads in each of layers 0, 5 (12.5%) and 2 of 8 query heads in layer 1 (25%; asked 30%)"
    )
    assert (
        rounding_warning(overridden)
        == "pruning other than the fraction asked: 2 of 8 query heads in layer 1 (25%; asked 30%)"
    )
    assert head_counts(layers, [], 0.125, ()) == [] and counts_text([]) == "no layer"
