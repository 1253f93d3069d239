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
