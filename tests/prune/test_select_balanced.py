"""select_balanced: the heads a reshape removes leave whole KV groups of equal size, chosen by
score (issue 21: query head h uses KV head h // group size, so an unbalanced cut would make
the kept heads attend with the wrong KV head after slicing)."""

from __future__ import annotations

import pytest

from surgeon.prune.importance import select_balanced


def kept_groups(removed: list[int], num_heads: int, num_kv_heads: int) -> dict[int, list[int]]:
    size = num_heads // num_kv_heads
    kept = [h for h in range(num_heads) if h not in removed]
    groups: dict[int, list[int]] = {}
    for h in kept:
        groups.setdefault(h // size, []).append(h)
    return groups


@pytest.mark.parametrize(
    "num_heads, num_kv_heads, groups, per_group",
    [(9, 3, 3, 2), (9, 3, 2, 3), (9, 3, 1, 1), (8, 4, 4, 1), (8, 4, 2, 2), (32, 8, 8, 3), (32, 8, 6, 4), (4, 4, 3, 1)],
)
def test_what_is_left_is_whole_groups_of_equal_size(num_heads, num_kv_heads, groups, per_group):
    scores = [((h * 7919) % 13) / 13 for h in range(num_heads)]  # no order a bug could lean on
    removed = select_balanced(scores, num_heads, num_kv_heads, groups, per_group)
    left = kept_groups(removed, num_heads, num_kv_heads)
    assert len(left) == groups and all(len(heads) == per_group for heads in left.values())
    assert len(removed) == num_heads - groups * per_group


def test_the_lowest_scores_go_first_within_groups_and_as_groups():
    # SmolLM2's shape: 9 heads, 3 groups of 3
    scores = [0.9, 0.1, 0.5, 0.2, 0.8, 0.7, 0.6, 0.3, 0.4]
    assert select_balanced(scores, 9, 3, 3, 2) == [1, 3, 7]  # the lowest of each group
    # group 2 sums to 1.3, lower than group 0 (1.5) and group 1 (1.7): it goes whole
    assert select_balanced(scores, 9, 3, 2, 3) == [6, 7, 8]
    assert select_balanced(scores, 9, 3, 2, 2) == [1, 3, 6, 7, 8]


def test_a_shape_that_does_not_exist_is_refused():
    with pytest.raises(ValueError):
        select_balanced([0.0] * 9, 9, 3, 4, 2)
    with pytest.raises(ValueError):
        select_balanced([0.0] * 9, 9, 3, 3, 4)
