"""The kept channels of a channel reshape matched by rows (no manifest), where BASE has two
channels with the same gate_proj row: which one went must not be guessed."""

from __future__ import annotations

import torch
from safetensors.torch import save_file

from surgeon.diff.engine import DiffOptions, diff_checkpoints
from surgeon.diff.report import channel_rows
from surgeon.format.checkpoint import open_checkpoint


def _save(folder, gate, up, down):
    folder.mkdir()
    prefix = "model.layers.0.mlp."
    tensors = {prefix + "gate_proj.weight": gate, prefix + "up_proj.weight": up, prefix + "down_proj.weight": down}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"))
    return open_checkpoint(folder)


def test_a_channel_whose_gate_row_another_shares_is_matched_by_its_up_row_too(tmp_path):
    gen = torch.Generator().manual_seed(0)
    gate = torch.randn(6, 4, generator=gen)
    gate[2] = gate[1]  # channels 1 and 2 share a gate row (their up rows and down columns differ)
    up, down = torch.randn(6, 4, generator=gen), torch.randn(4, 6, generator=gen)
    kept = [0, 2, 3, 4, 5]  # channel 1 sliced out
    base = _save(tmp_path / "base", gate, up, down)
    other = _save(tmp_path / "other", gate[kept], up[kept], down[:, kept])
    rows = channel_rows(diff_checkpoints(base, other, DiffOptions(cache_dir=None)))
    assert [(r.layer, r.removed, r.sliced) for r in rows] == [(0, [1], True)]


def test_channels_alike_in_gate_and_up_are_not_established(tmp_path):
    gen = torch.Generator().manual_seed(1)
    gate, up, down = (
        torch.randn(6, 4, generator=gen),
        torch.randn(6, 4, generator=gen),
        torch.randn(4, 6, generator=gen),
    )
    gate[2], up[2] = gate[1], up[1]  # only the down columns tell channels 1 and 2 apart
    kept = [0, 2, 3, 4, 5]
    base = _save(tmp_path / "base", gate, up, down)
    other = _save(tmp_path / "other", gate[kept], up[kept], down[:, kept])
    report = diff_checkpoints(base, other, DiffOptions(cache_dir=None))
    down_diff = next(t for t in report.tensors if t.name.endswith("down_proj.weight"))
    assert down_diff.status == "reshaped" and down_diff.channels is None  # which went is not established
