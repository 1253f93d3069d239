"""The rollback plan the TUI edits: toggles, ranges, undo/redo, and what it says will be
written, checked against what salvage then really writes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from surgeon.diff.engine import DiffOptions, diff_checkpoints
from surgeon.errors import SurgeonError
from surgeon.format.checkpoint import open_checkpoint
from surgeon.recover.plan import RollbackPlan
from surgeon.recover.salvage import salvage
from tests.helpers import BASE, PRUNED, make_variant, read_tensor, sha


def plan_for(base=BASE, candidate=PRUNED) -> RollbackPlan:
    return RollbackPlan(diff_checkpoints(open_checkpoint(base), open_checkpoint(candidate), DiffOptions(stats=False)))


def test_starts_as_the_candidate_and_toggles_layers():
    plan = plan_for()
    changed = plan.changed_layers
    assert changed and plan.keep == changed
    assert all(plan.source_of(n) == "candidate" for n in changed)
    first = changed[0]
    plan.toggle(first)
    assert plan.source_of(first) == "base"
    assert plan.summary().rolled_back == [first]
    plan.toggle(first)
    assert plan.source_of(first) == "candidate"


def test_identical_layer_cannot_be_toggled():
    plan = plan_for()
    identical = [n for n in range(plan.num_layers) if n not in plan.changed_layers]
    assert identical, "the fixture pair leaves some layers untouched"
    assert plan.source_of(identical[0]) == "identical"
    with pytest.raises(SurgeonError, match="identical"):
        plan.toggle(identical[0])


def test_ranges_undo_and_redo():
    plan = plan_for()
    everything = list(plan.keep)
    plan.roll_back("0-7")
    assert plan.keep == []
    plan.keep_only(f"{everything[0]}")
    assert plan.keep == [everything[0]]
    plan.restore("all")
    assert plan.keep == everything
    assert plan.undo() and plan.keep == [everything[0]]
    assert plan.undo() and plan.keep == []
    assert plan.redo() and plan.keep == [everything[0]]
    plan.roll_back("all")  # a new change drops the redo history
    assert not plan.redo()
    while plan.undo():
        pass
    assert plan.keep == everything
    with pytest.raises(SurgeonError, match="layers '99'"):
        plan.roll_back("99")
    with pytest.raises(SurgeonError, match="ranges like"):
        plan.roll_back("four")
    with pytest.raises(SurgeonError, match="layers '5-3'"):
        plan.roll_back("5-3")


def test_non_layer_tensors_follow_their_toggle(tmp_path):
    cand = make_variant(tmp_path / "cand", replace={"model.norm.weight": np.full(64, 2.0, np.float32)})
    plan = plan_for(candidate=cand)
    assert plan.changed_layers == [] and plan.state.keep_non_layer
    assert plan.summary().from_candidate == ["model.norm.weight"]
    plan.toggle_non_layer()
    summary = plan.summary()
    assert summary.from_candidate == [] and summary.from_base == ["model.norm.weight"]
    assert summary.shards_written == []
    assert plan.undo() and plan.state.keep_non_layer


def test_summary_matches_what_salvage_writes(tmp_path):
    """The live plan's shard counts are a promise: salvage must keep it."""
    base, cand = open_checkpoint(BASE), open_checkpoint(PRUNED)
    plan = plan_for()
    plan.keep_only(str(plan.changed_layers[0]))
    summary = plan.summary()
    _, manifest = salvage(PRUNED, BASE, plan.keep, tmp_path / "out")
    written = manifest["written"]
    assert sorted(set(written["shards"]) - set(written["copied_shards"])) == summary.shards_written
    assert sorted(written["copied_shards"]) == summary.shards_identical
    for shard in summary.shards_identical:
        assert sha(tmp_path / "out" / shard) == sha(BASE / shard)
    kept = summary.from_candidate[0]
    assert np.array_equal(read_tensor(tmp_path / "out", kept), read_tensor(PRUNED, kept))
    for name in summary.from_base:
        assert np.array_equal(read_tensor(tmp_path / "out", name), read_tensor(BASE, name))
    assert json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())["weight_map"] == {
        n: t.file for n, t in base.tensors.items()
    }
    assert cand.tensors.keys() == base.tensors.keys()


def test_problems_listed_for_a_pair_salvage_refuses(tmp_path):
    cand = make_variant(tmp_path / "cand", drop=("model.norm.weight",))
    summary = plan_for(candidate=cand).summary()
    assert summary.problems == ["model.norm.weight: removed in the candidate"]
