"""A channel prune whose manifest understates the MLP channels it removed, every hash made
true of the bytes by the writer itself: verify must not say the claims hold."""

from __future__ import annotations

import pytest

import surgeon.prune.engine as engine
from surgeon.demo import DEMO_MODEL
from surgeon.prune.engine import prune
from surgeon.recover.verify import verify
from tests.helpers import tiny_prune_options

pytest.importorskip("transformers")

LAYER = 1


def _understated(monkeypatch, keep_down_column: bool):
    """Layer 1's last chosen channel has its gate and up rows zeroed (a dead channel), and
    the manifest leaves it out; with `keep_down_column` its down_proj column keeps the base's."""
    real_heal, real_manifest = engine.heal_down, engine._Run._manifest
    calls: list[int] = []

    def heal(job, removed, heal, bias):
        done = real_heal(job, removed, heal, bias)
        calls.append(len(calls))
        if keep_down_column and calls[-1] == LAYER:  # layers 0 and 1 are healed in order
            done.weight[:, removed[-1]] = job.weight[:, removed[-1]]
        return done

    def manifest(self, report, results, *args):
        made = real_manifest(self, report, results, *args)
        for layer in made["layers"]:
            if layer["layer"] == LAYER:
                layer["ffn_pruned_channels"] = layer["ffn_pruned_channels"][:-1]
        return made

    monkeypatch.setattr(engine, "heal_down", heal)
    monkeypatch.setattr(engine._Run, "_manifest", manifest)


@pytest.mark.parametrize("keep_down_column", [True, False])
def test_a_dead_channel_left_out_of_the_manifest_is_not_verified(tmp_path, monkeypatch, keep_down_column):
    _understated(monkeypatch, keep_down_column)
    out = tmp_path / "out"
    prune(DEMO_MODEL, out, tiny_prune_options(ffn_frac=0.25, prune_frac=0.0, layers="0-1"))
    report = verify(out, DEMO_MODEL)
    assert not report.ok
    assert any(f"layer {LAYER}" in d for d in report.discrepancies), report.discrepancies


@pytest.mark.parametrize("lie", ["channel swapped", "one fewer", "none"])
def test_a_reshape_whose_prune_record_differs_from_its_reshape_block_is_not_verified(tmp_path, monkeypatch, lie):
    """The prune record (layers[].ffn_pruned_channels, which the summary, diff and TUI show)
    must name the channels the reshape block says were sliced: the bytes pin only the latter."""
    import surgeon.prune.reshape as reshape_module

    real = reshape_module._manifest

    def manifest(previous, record, report):
        made = real(previous, record, report)
        entry = next(layer for layer in made["layers"] if layer["layer"] == 3)
        claimed = entry["ffn_pruned_channels"]
        if lie == "channel swapped":
            other = next(c for c in range(128) if c not in claimed)
            entry["ffn_pruned_channels"] = sorted([*claimed[1:], other])
        elif lie == "one fewer":
            entry["ffn_pruned_channels"] = claimed[:-1]
        else:
            entry["ffn_pruned_channels"] = []
        return made

    monkeypatch.setattr(reshape_module, "_manifest", manifest)
    out = tmp_path / "out"
    prune(DEMO_MODEL, out, tiny_prune_options(ffn_frac=0.25, prune_frac=0.0, layers="all", mode="reshape"))
    report = verify(out, DEMO_MODEL)
    assert not report.ok
    assert any("layer 3" in d or "(0-2, 4-7)" in d for d in report.discrepancies), report.discrepancies


def test_a_channel_claimed_twice_is_a_discrepancy_not_a_traceback(tmp_path):
    """ffn_pruned_channels naming a removed channel twice: the claim differs from the zero
    columns by no channel, and the message's 'first differing' was min() of nothing."""
    import json
    import shutil

    from click.testing import CliRunner

    from surgeon.cli.main import main

    out = tmp_path / "out"
    prune(DEMO_MODEL, out, tiny_prune_options(ffn_frac=0.25, prune_frac=0.0, layers="0-1"))
    lying = shutil.copytree(out, tmp_path / "lying")
    manifest = json.loads((lying / "prune_manifest.json").read_text())
    claimed = manifest["layers"][1]["ffn_pruned_channels"]
    manifest["layers"][1]["ffn_pruned_channels"] = [*claimed, claimed[0]]
    (lying / "prune_manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(main, ["verify", str(lying), "--base", str(DEMO_MODEL), "--no-progress"])
    assert result.exit_code in (1, 2) and "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "layer 1" in result.output


def test_a_reshape_that_keeps_a_channel_with_a_zero_down_column_is_not_verified(tmp_path, monkeypatch):
    """Layer 3's heal zeroes one more down_proj column than it removed: the reshape keeps
    that channel (its gate and up rows are not zero) with no output, and says it kept it."""
    real_heal = engine.heal_down
    calls: list[int] = []

    def heal(job, removed, heal, bias):
        done = real_heal(job, removed, heal, bias)
        calls.append(len(calls))
        if calls[-1] == 3:
            done.weight[:, next(c for c in range(128) if c not in removed)] = 0
        return done

    monkeypatch.setattr(engine, "heal_down", heal)
    out = tmp_path / "out"
    prune(DEMO_MODEL, out, tiny_prune_options(ffn_frac=0.25, prune_frac=0.0, layers="all", mode="reshape"))
    report = verify(out, DEMO_MODEL)
    assert not report.ok
    assert any("layer 3" in d for d in report.discrepancies), report.discrepancies


def test_a_reshape_whose_prune_record_names_other_heads_is_not_verified(tmp_path, monkeypatch):
    """As for channels: layers[].pruned_heads must be the heads the reshape block sliced."""
    import surgeon.prune.reshape as reshape_module

    real = reshape_module._manifest

    def manifest(previous, record, report):
        made = real(previous, record, report)
        entry = next(layer for layer in made["layers"] if layer["layer"] == 3)
        heads = entry["pruned_heads"]
        entry["pruned_heads"] = sorted({*heads[1:], next(h for h in range(entry["num_heads"]) if h not in heads)})
        return made

    monkeypatch.setattr(reshape_module, "_manifest", manifest)
    out = tmp_path / "out"
    prune(DEMO_MODEL, out, tiny_prune_options(ffn_frac=0.0, prune_frac=0.25, layers="all", mode="reshape"))
    report = verify(out, DEMO_MODEL)
    assert not report.ok
    assert any("layer 3" in d for d in report.discrepancies), report.discrepancies


def test_a_down_proj_sliced_in_a_layer_the_reshape_block_leaves_out_is_not_verified(tmp_path):
    """Only down_proj narrower (gate and up as the base's): the layer's MLP is not the base's shape."""
    from surgeon.format.checkpoint import open_checkpoint
    from surgeon.format.safetensors import TensorBytes, write_safetensors
    from surgeon.recover.verify_reshape_ffn import check_channels

    out = prune(DEMO_MODEL, tmp_path / "heads", tiny_prune_options(prune_frac=0.25, mode="reshape")).output
    base, ckpt = open_checkpoint(DEMO_MODEL), open_checkpoint(out)
    name = "model.layers.2.mlp.down_proj.weight"
    info = ckpt.tensors[name]
    shard = out / info.file
    data = shard.read_bytes()
    tensors = []
    for other in ckpt.shards[info.file].tensors.values():
        raw = data[other.start : other.end]
        if other.name == name:  # one column fewer: 64 rows of 127 bf16 values
            rows = [raw[r * 256 : r * 256 + 254] for r in range(64)]
            tensors.append(TensorBytes(name, other.dtype.name, (64, 127), b"".join(rows)))
        else:
            tensors.append(TensorBytes(other.name, other.dtype.name, other.shape, raw))
    write_safetensors(shard, tensors, ckpt.shards[info.file].metadata or {})
    _, problems = check_channels([], "model.layers", base, open_checkpoint(out), {})
    assert problems == ["layer 2: its MLP is not the base's shape, but the reshape block names no channel removed"]
