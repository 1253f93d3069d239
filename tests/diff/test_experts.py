"""Mixture-of-experts checkpoints: experts collapse into ranges as layers do, in the family
table of the terminal report and of the Markdown card (issue 12: a 128-expert card was 146
rows, one per expert). The JSON keeps one family row per expert."""

import json

import pytest
from click.testing import CliRunner

from fixtures.build_moe_pair import EXPERTS, LAYERS, NAMINGS, moe_pair
from surgeon.cli.main import main
from surgeon.diff.engine import DiffOptions, diff_checkpoints
from surgeon.diff.report import ExpertsRow, family_rows, shown_family_rows, to_json
from surgeon.format.checkpoint import open_checkpoint


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
