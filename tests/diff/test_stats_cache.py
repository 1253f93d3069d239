"""Issue 18.5: a changed tensor pair's stats kept in the hash cache (surgeon/diff/stats_cache.py),
so a warm diff reads no tensor bytes; trusted only as far as the cache's SHA256s are."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from surgeon.diff import engine
from surgeon.diff.engine import DiffOptions, diff_checkpoints
from surgeon.format.checkpoint import open_checkpoint
from tests.helpers import BASE, PRUNED, make_variant, read_tensor

Q0 = "model.layers.0.self_attn.q_proj.weight"


def run(cache: Path | None, other: Path = PRUNED, **options):
    chosen = DiffOptions(cache_dir=cache, **options)
    return diff_checkpoints(open_checkpoint(BASE), open_checkpoint(other), chosen)


def results(report) -> dict:
    return {t.name: (t.stats, t.heads) for t in report.tensors if t.stats is not None}


def entries(cache: Path) -> list[Path]:
    return sorted((cache / "stats").glob("*.json"))


def read_no_bytes(monkeypatch) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("tensor bytes read for stats")

    monkeypatch.setattr(engine, "tensor_stats", forbidden)


@pytest.fixture(scope="module")
def truth() -> dict:
    """BASE -> PRUNED's stats computed from the bytes (no cache)."""
    found = results(run(None))
    assert len(found) == 8 and any(heads is not None for _, heads in found.values())
    return found


def poison(cache: Path) -> None:
    """Every stats entry now claims one changed element and cosine 1 (well-formed, wrong)."""
    for path in entries(cache):
        entry = json.loads(path.read_text())
        entry["stats"] |= {"elements_changed": 1, "cosine": 1.0}
        path.write_text(json.dumps(entry))


def test_a_warm_diff_reads_the_stats_from_the_cache(tmp_path, monkeypatch, truth):
    cache = tmp_path / "cache"
    assert results(run(cache)) == truth
    assert len(entries(cache)) == 8
    assert {p.stat().st_mode & 0o777 for p in entries(cache)} == {0o600}
    read_no_bytes(monkeypatch)
    assert results(run(cache)) == truth


@pytest.mark.parametrize("how", ["entry writable", "folder writable", "another user", "card evidence", "no hash"])
def test_a_poisoned_entry_is_not_read_where_the_cache_is_not_trusted(tmp_path, monkeypatch, truth, how):
    """A private cache is trusted for speed (as its SHA256s are); elsewhere an entry, however
    well-formed, is never read: the stats come from the bytes."""
    cache = tmp_path / "cache"
    run(cache)
    poison(cache)
    assert results(run(cache))[Q0][0].elements_changed == 1  # private: read, as documented
    options: dict = {}
    if how == "entry writable":
        entries(cache)[0].chmod(0o666)
        for path in entries(cache)[1:]:
            path.unlink()  # the one left is not read, the others are computed again
    elif how == "folder writable":
        (cache / "stats").chmod(0o777)
    elif how == "another user":
        monkeypatch.setattr(os, "getuid", lambda: os.geteuid() + 1)
    elif how == "card evidence":
        options = {"trust_cache": False, "trust_blob_names": False}
    else:
        options = {"hash": False}
    assert results(run(cache, **options)) == truth


DAMAGE = {
    "negative count": lambda e: e["stats"].update(elements_changed=-1),
    "count over numel": lambda e: e["stats"].update(elements_changed=10**12),
    "count as text": lambda e: e["stats"].update(elements_changed="5"),
    "count as bool": lambda e: e["stats"].update(elements_changed=True),
    "cosine over 1": lambda e: e["stats"].update(cosine=1.5),
    "peak as int": lambda e: e["stats"].update(max_abs_delta=3),
    "negative peak": lambda e: e["stats"].update(max_abs_delta=-0.5),
    "experts on a plain tensor": lambda e: e["stats"].update(experts_changed=[0]),
    "stats missing": lambda e: e.pop("stats"),
    "heads short": lambda e: e["heads"][0].pop() if e["heads"] else e.update(heads=[[True]] * 3),
    "heads as ints": lambda e: e.update(heads=[[1] * len(f) for f in e["heads"]] if e["heads"] else [[1]] * 3),
    "other key": lambda e: e.update(key="0" * 64),
    "old stats version": lambda e: e.update(stats_version=0),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_entry_is_a_miss(tmp_path, truth, damage):
    cache = tmp_path / "cache"
    run(cache)
    for path in entries(cache):
        entry = json.loads(path.read_text())
        DAMAGE[damage](entry)
        path.write_text(json.dumps(entry))
    assert results(run(cache)) == truth


def test_a_changed_tensor_gets_its_stats_computed_again(tmp_path, monkeypatch, truth):
    """The key holds both tensors' SHA256s: new bytes make a new key, never the old answer."""
    cache = tmp_path / "cache"
    run(cache)
    changed = make_variant(tmp_path / "changed", src=PRUNED, replace={Q0: read_tensor(PRUNED, Q0) * 0.5})
    expected = results(run(None, changed))
    assert expected[Q0] != truth[Q0]
    assert results(run(cache, changed)) == expected
    assert len(entries(cache)) == 9  # the seven others were found, the new pair stored
    read_no_bytes(monkeypatch)
    assert results(run(cache, changed)) == expected
