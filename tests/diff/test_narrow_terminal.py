"""At 80 columns nothing a reader needs is cut (issue 12): tensor, family, shard and file
names fold onto more lines, short hashes keep all 12 characters, and the stats columns of
the tensors table go before a name would."""

import io

import pytest
from rich.console import Console

from surgeon.diff.engine import DiffOptions, diff_checkpoints
from surgeon.diff.render_terminal import render_terminal
from surgeon.diff.report import differing, shown_family_rows
from surgeon.format.checkpoint import open_checkpoint
from tests.helpers import BASE, PRUNED


def rendered(width: int) -> tuple[str, object]:
    report = diff_checkpoints(open_checkpoint(str(BASE)), open_checkpoint(str(PRUNED)), DiffOptions(cache_dir=None))
    buffer = io.StringIO()
    render_terminal(report, Console(file=buffer, width=width, highlight=False), verbose=True)
    return buffer.getvalue(), report


def first_column(text: str, title: str) -> str:
    """The first column of the table under `title`, its folded lines joined."""
    block = text.split(title, 1)[1].split("└", 1)[0]
    cells = [line.split("│")[1].strip() for line in block.splitlines() if line.startswith("│")]
    return "".join(cells)


@pytest.mark.parametrize("width", [80, 100])
def test_nothing_is_cut_at_narrow_widths(width):
    text, report = rendered(width)
    assert "…" not in text
    assert max(map(len, text.splitlines())) <= width
    assert first_column(text, "Tensors that differ") == "".join(t.name for t in differing(report))
    families = [row.family for row in shown_family_rows(report)]
    assert first_column(text, "Tensor families by layer") == "".join(families)
    assert first_column(text, "Shard files") == "".join(s.name for s in report.shards)
    for shard in report.shards:
        assert shard.sha256[0][:12] in text and shard.sha256[1][:12] in text
    assert "model-00002-of-00002.safetensors: __metadata__.surgeon_build added" in text


def test_wide_terminals_keep_every_stats_column():
    text, _ = rendered(160)
    header = next(line for line in text.splitlines() if "tensor " in line and "heads" in line)
    assert all(column in header for column in ("max |Δ|", "rel ‖Δ‖", "cosine", "elems Δ", "heads"))
    narrow, _ = rendered(80)
    assert "cosine" not in narrow and "max |Δ|" in narrow


def test_a_narrow_family_table_gives_the_family_room_and_cuts_nothing(tmp_path):
    """Below 120 columns "layers unchanged" goes; the family keeps up to 36 columns, so a
    Gemma 4 MoE family reads whole (it folded after 17 characters in four even columns)."""
    from fixtures.build_moe_pair import gemma4_moe_pair

    gemma4_moe_pair(tmp_path, {(2, 3): "gate_up_proj"})
    report = diff_checkpoints(open_checkpoint(tmp_path / "base"), open_checkpoint(tmp_path / "other"), DiffOptions())
    for width in (60, 80, 100):
        buffer = io.StringIO()
        render_terminal(report, Console(file=buffer, width=width, highlight=False))
        text = buffer.getvalue()
        assert max(map(len, text.splitlines())) <= width
        table = text.split("Tensor families by layer", 1)[1].split("└", 1)[0]
        assert "layers unchanged" not in table and "statuses" in table
        assert first_column(text, "Tensor families by layer") == "".join(r.family for r in shown_family_rows(report))
        if width >= 80:
            assert "│ post_feedforward_layernorm_1.weight " in table
            assert "│ experts.gate_up_proj " in table and "2 (expert 3)" in table
    wide = io.StringIO()
    render_terminal(report, Console(file=wide, width=120, highlight=False))
    assert "layers unchanged" in wide.getvalue()


def folded_names(text: str, title: str, names: list[str]) -> list[list[str]]:
    """The lines each of `names` takes in the first column of the table under `title`."""
    block = text.split(title, 1)[1].split("└", 1)[0]
    lines_of_cells = (line.split("│")[1].strip() for line in block.splitlines() if line.startswith("│"))
    cells = (cell for cell in lines_of_cells if cell)  # a row taller than its name pads it with blank lines
    found = []
    for name in names:
        lines = [next(cells)]
        while "".join(lines) != name:
            assert name.startswith("".join(lines)), (name, lines)
            lines.append(next(cells))
        found.append(lines)
    return found


@pytest.mark.parametrize("width", [60, 80, 100])
def test_names_fold_between_their_parts(width):
    """A name folds after a `.`, `-` or `_`, not inside a word: `model-00001-of-00002.` /
    `safetensors`, where rich cut `model-00001-of-00002.sa` / `fetensors` at 80 columns;
    `o_proj` stays whole after `self_attn.`. Copied from the terminal, each line is a piece
    of the name and nothing else (no zero-width character added)."""
    text, report = rendered(width)
    tables = {
        "Shard files": [s.name for s in report.shards],
        "Tensors that differ": [t.name for t in differing(report)],
        "Tensor families by layer": [row.family for row in shown_family_rows(report)],
    }
    folds = 0
    for title, names in tables.items():
        for lines in folded_names(text, title, names):
            assert all(line[-1] in ".-_" for line in lines[:-1]), (title, lines)
            folds += len(lines) - 1
    assert "\u200b" not in text and "\u00ad" not in text
    if width == 80:  # the folds this is about happen here
        assert folds and ["model-00001-of-00002.", "safetensors"] in folded_names(
            text, "Shard files", tables["Shard files"]
        )
        tensors = folded_names(text, "Tensors that differ", tables["Tensors that differ"])
        assert ["model.layers.0.self_attn.", "o_proj.weight"] in tensors


def test_a_word_wider_than_the_column_still_folds_whole():
    """No separator in reach: the name folds inside the word, and every character is kept."""
    from rich.table import Table

    from surgeon.diff.fold import FoldedName

    name = "x" * 30 + ".weight_of_" + "y" * 25
    table = Table()
    table.add_column("tensor", overflow="fold")
    table.add_row(FoldedName(name))
    buffer = io.StringIO()
    Console(file=buffer, width=24, highlight=False).print(table)
    lines = [line.split("│")[1].strip() for line in buffer.getvalue().splitlines() if line.startswith("│")]
    assert max(map(len, buffer.getvalue().splitlines())) <= 24  # a 20-character column
    assert lines == ["x" * 20, "x" * 10 + ".weight_", "of_", "y" * 20, "y" * 5]
