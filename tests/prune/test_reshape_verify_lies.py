"""A reshaped checkpoint whose reshape block lies, every hash made true of the bytes by the
writer itself: verify must not say it holds. Made by `prune --mode reshape` of the demo Gemma 4
with the slicing or the record made wrong (monkeypatched), so only the reshape check stands
between the lie and "verified"."""

from __future__ import annotations

import dataclasses

import pytest
from click.testing import CliRunner

import surgeon.prune.reshape as reshape_module
from surgeon.cli.main import main
from surgeon.demo import DEMO_MODEL
from tests.prune.test_prune_reshape import SHORT

pytest.importorskip("transformers")

LAYER = 5  # a full-attention layer: 2 KV groups of 4 query heads, one head removed from each


def pruned(out):
    args = ["prune", str(DEMO_MODEL), "-o", str(out), "--mode", "reshape", "--prune-frac", "0.25", *SHORT]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output


def verify(out):
    return CliRunner().invoke(main, ["verify", str(out), "--base", str(DEMO_MODEL), "--no-progress"])


def test_a_layer_left_out_of_the_reshape_block_is_not_verified(tmp_path, monkeypatch):
    """Layer 5 sliced to the wrong heads (each removed head's neighbour in its group goes
    instead, so a zeroed head is kept) and left out of the record: its rows are never
    compared with the base's, and verify said the claims hold."""
    real_slices, real_record = reshape_module.sliced_tensors, reshape_module._reshape_record

    def slices(ckpt, layers):
        def shifted(heads):
            size = heads.group
            wrong = sorted(h // size * size + (h % size + 1) % size for h in heads.removed)
            return dataclasses.replace(heads, removed=wrong)

        return real_slices(ckpt, [shifted(h) if h.layer == LAYER else h for h in layers])

    def record(ckpt, layers, *args):
        made = real_record(ckpt, layers, *args)
        made["layers"] = [entry for entry in made["layers"] if entry["layer"] != LAYER]
        return made

    monkeypatch.setattr(reshape_module, "sliced_tensors", slices)
    monkeypatch.setattr(reshape_module, "_reshape_record", record)
    pruned(tmp_path / "out")
    result = verify(tmp_path / "out")
    assert result.exit_code == 1, result.output
    assert f"layer {LAYER}" in result.output


def test_heads_kept_out_of_order_are_not_verified(tmp_path, monkeypatch):
    """Layer 5's kept heads sliced (and recorded) with the last one first: each q row block
    is a base head's, but that head now reads KV head 0, not 1: not the mask build's model."""
    real_kept = reshape_module.LayerHeads.kept_heads

    def kept(self):
        heads = real_kept(self)
        return heads[-1:] + heads[:-1] if self.layer == LAYER else heads

    monkeypatch.setattr(reshape_module.LayerHeads, "kept_heads", kept)
    pruned(tmp_path / "out")
    result = verify(tmp_path / "out")
    assert result.exit_code == 1, result.output
    assert f"layer {LAYER}" in result.output
