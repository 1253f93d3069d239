"""Per-head scans where one head is larger than a stats chunk.

A q_proj head of Llama-3-8B is 128 rows of 4096 (512Ki elements), Gemma-4-31B's 256 rows of
5376: wider than STATS_CHUNK_ELEMENTS, so a head spans several chunks and a chunk may straddle
two heads. Before the fix such a diff ended in "internal error: cannot reshape". The scans are
checked against numpy's answer on the whole tensor.
"""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import save_file

from surgeon.diff import stats as stats_module
from surgeon.diff.stats import HeadLayout, tensor_stats, zero_heads
from surgeon.format.checkpoint import open_checkpoint


def _expected(base: np.ndarray, other: np.ndarray, heads: int, axis: str):
    def per_head(a: np.ndarray) -> np.ndarray:
        return a.reshape(heads, -1) if axis == "rows" else a.reshape(a.shape[0], heads, -1).swapaxes(0, 1)

    zero_b = [not per_head(base)[h].any() for h in range(heads)]
    zero_o = [not per_head(other)[h].any() for h in range(heads)]
    changed = [bool((per_head(base)[h] != per_head(other)[h]).any()) for h in range(heads)]
    return zero_b, zero_o, changed


# Chunk sizes (elements) against heads of 4 x 48 = 192 elements per head in rows: smaller than
# a head, a head and a bit (chunks straddle heads), and whole heads.
@pytest.mark.parametrize("chunk", [48, 100, 144, 192, 400, 1 << 18])
@pytest.mark.parametrize("axis", ["rows", "cols"])
def test_head_scan_matches_numpy_for_any_chunk_size(tmp_path, monkeypatch, chunk, axis):
    monkeypatch.setattr(stats_module, "STATS_CHUNK_ELEMENTS", chunk)
    heads, dim, width = 6, 4, 48
    # Built head-major (rows of q_proj); o_proj holds the same heads as columns.
    rows_b = np.random.default_rng(3).standard_normal((heads * dim, width)).astype(np.float16)
    rows_b[dim * 5 : dim * 6] = 0  # head 5: zero on both sides
    rows_o = rows_b.copy()
    rows_o[dim * 1 : dim * 2] = 0  # head 1 zeroed
    rows_o[dim * 4 + 3, 7] += 1  # head 4: one element, in its last row
    base, other = (rows_b, rows_o) if axis == "rows" else (rows_b.T.copy(), rows_o.T.copy())
    save_file({"w": base}, str(tmp_path / "a.safetensors"))
    save_file({"w": other}, str(tmp_path / "b.safetensors"))
    a, b = open_checkpoint(str(tmp_path / "a.safetensors")), open_checkpoint(str(tmp_path / "b.safetensors"))
    layout = HeadLayout(axis, heads, dim)
    info_a, info_b = a.tensors["w"], b.tensors["w"]
    stats, scan = tensor_stats(a.shard_path(info_a.file), info_a, b.shard_path(info_b.file), info_b, layout)
    zero_b, zero_o, changed = _expected(base, other, heads, axis)
    assert scan is not None
    assert (scan.base_zero, scan.other_zero, scan.changed) == (zero_b, zero_o, changed)
    assert scan.statuses() == ["unchanged", "zeroed", "unchanged", "unchanged", "changed", "unchanged"]
    assert stats.elements_changed == int(np.count_nonzero(base != other))
    assert zero_heads(b.shard_path(info_b.file), info_b, layout) == zero_o


@pytest.mark.parametrize("special", [None, np.inf, np.nan, 6e4])
@pytest.mark.parametrize("axis", ["rows", "cols"])
def test_identical_chunks_give_the_figures_of_the_full_pass(tmp_path, monkeypatch, special, axis):
    """Chunks whose bytes are equal on both sides take a shorter pass (one decode and one dot);
    the stats and head scans must be exactly the full pass's, NaN, inf and overflow included."""
    monkeypatch.setattr(stats_module, "STATS_CHUNK_ELEMENTS", 96)
    heads, dim = 8, 4
    # rows (q_proj): 32 rows of 12, 2 heads a chunk; cols (o_proj): 32 rows of 32, 3 rows a chunk
    base = np.random.default_rng(5).standard_normal((heads * dim, 12 if axis == "rows" else heads * dim))
    base = base.astype(np.float16)
    other = base.copy()
    if axis == "rows":
        base[dim * 6 : dim * 7] = other[dim * 6 : dim * 7] = 0  # zero on both sides, identical chunk
        other[dim * 2 : dim * 3] = 0  # the chunk of heads 2-3 changed: head 2 zeroed
        other[dim * 7 + 1, 5] -= 2  # and one element of head 7
        expected = ["unchanged", "unchanged", "zeroed", "unchanged", "unchanged", "unchanged", "unchanged", "changed"]
    else:
        base[:, dim * 6 : dim * 7] = other[:, dim * 6 : dim * 7] = 0
        other[10, dim * 7 + 1] -= 2  # row 10 (chunk 3) holds the only change, in head 7
        expected = ["unchanged"] * 7 + ["changed"]
    if special is not None:
        base[1, 2] = other[1, 2] = special  # in the first chunk, identical; 6e4**2 overflows float16 only
    save_file({"w": base}, str(tmp_path / "a.safetensors"))
    save_file({"w": other}, str(tmp_path / "b.safetensors"))
    a, b = open_checkpoint(str(tmp_path / "a.safetensors")), open_checkpoint(str(tmp_path / "b.safetensors"))
    info_a, info_b = a.tensors["w"], b.tensors["w"]
    layout = HeadLayout(axis, heads, dim)
    shortcut = stats_module._Accumulator._add_identical
    taken = []

    def counted(*args):
        taken.append(shortcut(*args))
        return taken[-1]

    def run():
        return tensor_stats(a.shard_path(info_a.file), info_a, b.shard_path(info_b.file), info_b, layout)

    monkeypatch.setattr(stats_module._Accumulator, "_add_identical", counted)
    short = run()
    assert any(taken)  # the shorter pass was taken
    monkeypatch.setattr(stats_module._Accumulator, "_add_identical", lambda *args: False)
    full = run()
    assert short == full
    assert short[1] is not None and short[1].statuses() == expected
    wide_b, wide_o = base.astype(np.float64), other.astype(np.float64)
    if special is None:
        assert short[0].rel_frobenius == pytest.approx(np.linalg.norm(wide_o - wide_b) / np.linalg.norm(wide_b))
    assert (short[0].max_abs_delta is None) == (special is not None and not np.isfinite(special))
