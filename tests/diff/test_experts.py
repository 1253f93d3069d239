"""Mixture-of-experts checkpoints: experts collapse into ranges as layers do, in the family
table of the terminal report and of the Markdown card (issue 12: a 128-expert card was 146
rows, one per expert). The JSON keeps one family row per expert."""

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import load_file, save_file

from fixtures.build_moe_pair import (
    EXPERTS,
    GEMMA4_CHANGES,
    GEMMA4_STACK,
    LAYERS,
    NAMINGS,
    gemma4_moe_pair,
    moe_pair,
)
from surgeon.cli.main import main
from surgeon.diff.engine import DiffOptions, diff_checkpoints
from surgeon.diff.report import ExpertsRow, experts_note, family_rows, shown_family_rows, to_json
from surgeon.diff.stats import STATS_CHUNK_ELEMENTS, tensor_stats
from surgeon.format.checkpoint import open_checkpoint
from surgeon.model.names import fused_experts


@pytest.mark.parametrize("naming", list(NAMINGS))
def test_experts_collapse_into_one_row_per_projection_naming_the_changed_experts(tmp_path, naming):
    pattern, projections = NAMINGS[naming]
    base, other = moe_pair(tmp_path, naming, {(2, 3): projections[1], (2, 11): projections[1], (3, 0): projections[2]})
    report = diff_checkpoints(open_checkpoint(str(base)), open_checkpoint(str(other)), DiffOptions(stats=False))
    rows = {row.family: row for row in shown_family_rows(report)}
    changed = rows[pattern.format(e="{0-15}", p=projections[1])]
    assert isinstance(changed, ExpertsRow) and changed.changed_experts == {2: [3, 11]}
    assert changed.layers_changed == [2] and changed.layers_unchanged == [0, 1, 3]
    assert changed.statuses == {"identical": LAYERS * EXPERTS - 2, "changed": 2}
    assert rows[pattern.format(e="{0-15}", p=projections[2])].changed_experts == {3: [0]}
    assert len(rows) == 2 + len(projections)  # embed, q_proj and one row per projection
    assert len(to_json(report)["families"]) == len(family_rows(report)) == 2 + EXPERTS * len(projections)


def test_the_terminal_report_and_the_card_name_the_changed_experts_in_a_few_rows(tmp_path):
    base, other = moe_pair(tmp_path, "qwen-moe", {(2, 3): "up_proj", (2, 11): "up_proj"})
    terminal = CliRunner().invoke(main, ["diff", str(base), str(other), "--no-progress"])
    assert terminal.exit_code == 1, terminal.output
    assert "mlp.experts.{0-15}.up_proj.weight" in terminal.output
    assert "2 (experts 3, 11)" in terminal.output
    assert "mlp.experts.1.up_proj" not in terminal.output.split("Tensor families by layer")[1].split("Shard files")[0]
    card = CliRunner().invoke(main, ["diff", str(base), str(other), "--markdown"])
    table = [line for line in card.output.splitlines() if line.startswith("| `")]
    assert any("mlp.experts.{0-15}.up_proj.weight" in line and "2 (experts 3, 11)" in line for line in table)
    assert len(table) < 10, table


def test_json_keeps_a_family_row_per_expert(tmp_path):
    base, other = moe_pair(tmp_path, "qwen-moe", {(1, 5): "gate_proj"})
    result = CliRunner().invoke(main, ["diff", str(base), str(other), "--json"])
    families = {row["family"] for row in json.loads(result.output)["families"]}
    assert "mlp.experts.5.gate_proj.weight" in families and not any("{" in f for f in families)


# Gemma 4's MoE (26B-A4B) fuses every expert of a layer into one tensor, `experts.gate_up_proj`
# [experts, 2*ff, hidden] and `experts.down_proj` [experts, hidden, ff] (see fixtures/build_moe_pair.py):
# one row per fused family already, and the stats pass, which reads both tensors, says which
# experts' slices differ.


def gemma4_report(tmp_path, changed, **options):
    base, other = gemma4_moe_pair(tmp_path, changed)
    return diff_checkpoints(open_checkpoint(str(base)), open_checkpoint(str(other)), DiffOptions(**options))


def test_fused_experts_rows_name_the_experts_whose_slices_differ(tmp_path):
    report = gemma4_report(tmp_path, GEMMA4_CHANGES, cache_dir=None)
    rows = {row.family: row for row in shown_family_rows(report)}
    gate_up, down = rows["experts.gate_up_proj"], rows["experts.down_proj"]
    assert isinstance(gate_up, ExpertsRow) and gate_up.changed_experts == {2: [3, 11]}
    assert gate_up.layers_changed == [2] and gate_up.layers_unchanged == [0, 1, 3]
    assert gate_up.statuses == {"changed": 1, "identical": LAYERS - 1}
    assert down.changed_experts == {3: [0]} and experts_note(down) == "3 (expert 0)"
    assert experts_note(gate_up) == "2 (experts 3, 11)"
    assert not any(isinstance(row, ExpertsRow) for name, row in rows.items() if not name.startswith("experts."))
    assert len(rows) == len(family_rows(report))  # fused families are one row each already


def test_terminal_card_and_json_of_a_gemma4_moe_pair(tmp_path):
    base, other = gemma4_moe_pair(tmp_path, GEMMA4_CHANGES)
    terminal = CliRunner().invoke(main, ["diff", str(base), str(other), "--no-progress"])
    assert terminal.exit_code == 1, terminal.output
    families = terminal.output.split("Tensor families by layer")[1].split("Shard files")[0]
    assert re.search(r"experts\.gate_up_proj +│ 2 \(experts 3, 11\) +│ 0-1, 3 ", families)
    assert re.search(r"experts\.down_proj +│ 3 \(expert 0\) +│ 0-2 ", families)
    tensors = terminal.output.split("Tensors that differ")[1]
    assert re.search(r"layers\.2\.experts\.gate_up_proj .*│ experts 3, 11 of 16 │", tensors)
    assert re.search(r"layers\.3\.experts\.down_proj .*│ expert 0 of 16 +│", tensors)
    card = CliRunner().invoke(main, ["diff", str(base), str(other), "--markdown"]).output
    assert "| `experts.gate_up_proj` | 2 (experts 3, 11) | 0-1, 3 |" in card
    assert "| `experts.down_proj` | 3 (expert 0) | 0-2 |" in card
    data = json.loads(CliRunner().invoke(main, ["diff", str(base), str(other), "--json"]).output)
    stats = {t["name"]: t["stats"] for t in data["tensors"]}
    assert stats[f"{GEMMA4_STACK}.2.experts.gate_up_proj"]["experts_changed"] == [3, 11]
    assert stats[f"{GEMMA4_STACK}.3.experts.down_proj"]["experts_changed"] == [0]
    assert {"experts.gate_up_proj", "experts.down_proj"} <= {row["family"] for row in data["families"]}


def test_without_stats_a_changed_fused_layer_names_no_experts(tmp_path):
    """--no-stats compares no slice, so nothing may claim which experts changed."""
    report = gemma4_report(tmp_path, GEMMA4_CHANGES, stats=False)
    rows = {row.family: row for row in shown_family_rows(report)}
    assert rows["experts.gate_up_proj"].layers_changed == [2] and experts_note(rows["experts.gate_up_proj"]) == ""
    base, other = tmp_path / "base", tmp_path / "other"
    terminal = CliRunner().invoke(main, ["diff", str(base), str(other), "--no-progress", "--no-stats"]).output
    assert re.search(r"experts\.gate_up_proj +│ 2 +│", terminal) and "experts 3" not in terminal


def test_a_layer_the_stats_did_not_compare_keeps_its_number_beside_the_named_ones(tmp_path):
    """An added fused tensor has no stats: its layer is listed without experts."""
    base, other = gemma4_moe_pair(tmp_path, {(2, 5): "gate_up_proj"})
    name = f"{GEMMA4_STACK}.1.experts.gate_up_proj"
    tensors = load_file(str(base / "model.safetensors"))
    del tensors[name]
    save_file(tensors, str(base / "model.safetensors"))
    report = diff_checkpoints(open_checkpoint(str(base)), open_checkpoint(str(other)), DiffOptions(cache_dir=None))
    row = next(r for r in shown_family_rows(report) if r.family == "experts.gate_up_proj")
    assert row.layers_changed == [1, 2] and row.changed_experts == {2: [5]}
    assert experts_note(row) == "1; 2 (expert 5)"


def test_inspect_reads_a_gemma4_moe_checkpoint(tmp_path):
    base, _ = gemma4_moe_pair(tmp_path, {})
    result = CliRunner().invoke(main, ["inspect", str(base)])
    assert result.exit_code == 0, result.output
    data = json.loads(CliRunner().invoke(main, ["inspect", str(base), "--json"]).output)
    families = {row["family"]: row for row in data["families"]}
    assert families["experts.gate_up_proj"]["layers"] == list(range(LAYERS))
    assert families["experts.gate_up_proj"]["parameters"] == LAYERS * EXPERTS * 8 * 16
    attention = {row["layer"]: (row["num_heads"], row["head_dim"], row["num_kv_heads"]) for row in data["attention"]}
    assert attention == {0: (2, 8, 1), 1: (2, 8, 1), 2: (2, 8, 1), 3: (2, 16, 1)}


def _slices_differ(a: np.ndarray, b: np.ndarray) -> list[int]:
    """numpy's answer: experts whose slice has an element that differs (bits, or values across dtypes)."""
    if a.dtype == b.dtype:
        a, b = a.view(np.uint8).reshape(len(a), -1), b.view(np.uint8).reshape(len(b), -1)
    return [e for e in range(len(a)) if not np.array_equal(a[e], b[e])]


# Elements touched in the other: the first and last of an expert slice, both sides of the
# stats chunk boundary (STATS_CHUNK_ELEMENTS), and a slice spanning a whole chunk.
CHUNK = STATS_CHUNK_ELEMENTS


@pytest.mark.parametrize(
    ("experts", "touched"),
    [
        (5, [0]),
        (5, [CHUNK - 1]),
        (5, [CHUNK]),
        (5, [5 * 120_000 - 1]),
        (5, [120_000 - 1, 120_000, 3 * 120_000 + 7]),
        (3, [2 * CHUNK + 5]),  # slices of 200k elements: chunk 2 begins inside expert 2
        (3, []),
    ],
)
@pytest.mark.parametrize("retype", [False, True])
def test_experts_changed_matches_numpy_across_chunk_boundaries(tmp_path, experts, touched, retype):
    rows = 600_000 // experts // 100
    base = np.random.default_rng(1).standard_normal((experts, rows, 100)).astype(np.float16)
    other = base.astype(np.float32) if retype else base.copy()  # f16 -> f32 keeps every value
    other.reshape(-1)[touched] += 1
    save_file({"experts.gate_up_proj": base}, str(tmp_path / "base.safetensors"))
    save_file({"experts.gate_up_proj": other}, str(tmp_path / "other.safetensors"))
    a, b = open_checkpoint(str(tmp_path / "base.safetensors")), open_checkpoint(str(tmp_path / "other.safetensors"))
    info_a, info_b = a.tensors["experts.gate_up_proj"], b.tensors["experts.gate_up_proj"]
    assert fused_experts("experts.gate_up_proj", info_a.shape) == experts
    stats, _ = tensor_stats(a.shard_path(info_a.file), info_a, b.shard_path(info_b.file), info_b, experts=experts)
    expected = (
        _slices_differ(base.astype(np.float32), other.astype(np.float32)) if retype else _slices_differ(base, other)
    )
    assert stats.experts_changed == expected
    assert stats.experts_changed == sorted({i // (rows * 100) for i in touched})
    plain, _ = tensor_stats(a.shard_path(info_a.file), info_a, b.shard_path(info_b.file), info_b)
    assert plain.experts_changed is None and plain.elements_changed == stats.elements_changed
