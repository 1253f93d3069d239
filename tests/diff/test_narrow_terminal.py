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
