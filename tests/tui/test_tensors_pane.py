"""The Tensors tab at sizes where it draws a window of its rows (issue 12): Home and End reach
the ends of the filtered list, page keys keep working past the window's edges, and at 80x24
shapes and hashes show whole while names fold. Pairs are built in each test."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from rich.console import Console
from safetensors.numpy import save_file
from surgeon.tui import views
from surgeon.tui.panes import FILTER_DELAY, PAGE, WINDOW

from fixtures.build_moe_pair import moe_pair
from surgeon.text import inert

LONG = "model.language_model.layers.0.per_layer_projection.experts_router_gate_with_a_long_name.weight"
BIG = "model.layers.0.self_attn.q_proj.weight"


def run_app(base, other, flow, size=(100, 36)):
    """The app on the pair, once hashing and the diff are done, then `flow(app, pilot)`."""
    from surgeon.tui.app import SurgeonApp

    async def main():
        app = SurgeonApp(base, other)
        async with app.run_test(size=size) as pilot:
            for _ in range(600):
                await asyncio.gather(*(w.wait() for w in app.workers), return_exceptions=True)
                await pilot.pause()
                if app.report is not None and app.job is None:
                    break
            await pilot.pause()
            await flow(app, pilot)

    asyncio.run(main())


def cursor_name(table) -> str:
    return str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)


async def filter_by(pilot, text: str) -> None:
    box = pilot.app.query_one("#filter-text")
    box.focus()
    box.value = ""
    await pilot.press(*text)
    await pilot.pause(FILTER_DELAY + 0.1)
    await pilot.pause()
    await pilot.press("enter")  # back to the table


@pytest.fixture
def moe(tmp_path):
    """A pair of 4 layers x 40 experts: 485 tensors, six pages of rows."""
    return moe_pair(tmp_path, "qwen-moe", {(1, 2): "up_proj", (3, 39): "down_proj"}, layers=4, experts=40)


def test_end_and_home_reach_the_ends_of_the_filtered_list(moe):
    async def flow(app, pilot):
        pane, table = app.query_one("TensorsPane"), app.query_one("#tensor-table")
        await pilot.press("2")
        assert len(pane.shown) == 485 and table.row_count == PAGE  # a page drawn, not the list
        for key in ("end", "ctrl+end", "shift+end", "G"):
            await pilot.press("home")
            assert cursor_name(table) == pane.shown[0].name
            await pilot.press(key)
            assert cursor_name(table) == pane.shown[-1].name, key
            assert table.row_count <= 2 * PAGE  # the last rows drawn alone
            assert table.scroll_x == 0
        await pilot.press("g")
        assert cursor_name(table) == pane.shown[0].name
        await pilot.press("end")
        await pilot.pause()
        count = app.query_one("#tensor-count").render()
        assert "485 of 485 tensors, sorted by name; row 485 " in str(count)  # where in the list, not the window
        await pilot.press("Y")
        assert app.clipboard == pane.shown[-1].name  # the yank reads the row drawn at the end

        await filter_by(pilot, "up_proj")
        matches = [t.name for t in app.report.tensors if "up_proj" in t.name]
        assert [t.name for t in pane.shown] == matches and len(matches) == 160
        await pilot.press("end")
        assert cursor_name(table) == matches[-1]
        await pilot.press("home")
        assert cursor_name(table) == matches[0]

    run_app(*moe, flow)


@pytest.mark.slow
def test_page_keys_cross_the_window_both_ways(moe):
    """From the last row up to the first and back with the page keys: the window moves under
    the cursor, which always stands on the tensor its row says."""

    async def flow(app, pilot):
        pane, table = app.query_one("TensorsPane"), app.query_one("#tensor-table")
        await pilot.press("2", "end")
        start = pane.first
        assert start > 0
        seen = [pane.first + table.cursor_row]
        while seen[-1] > 0:
            await pilot.press("pageup")
            at = pane.first + table.cursor_row
            assert at < seen[-1], "page up stopped"
            assert cursor_name(table) == pane.shown[at].name
            seen.append(at)
        assert pane.first == 0 and len(seen) > 485 // table.size.height
        while seen[-1] < len(pane.shown) - 1:
            await pilot.press("pagedown")
            at = pane.first + table.cursor_row
            assert at > seen[-1], "page down stopped"
            assert cursor_name(table) == pane.shown[at].name
            seen.append(at)
        assert table.row_count <= WINDOW
        await pilot.press("up")
        assert cursor_name(table) == pane.shown[-2].name

    run_app(*moe, flow)


def wide_pair(folder):
    """A 2048x2048 float16 tensor that differs, and names longer than 80 columns' name column."""
    big = np.zeros((2048, 2048), dtype=np.float16)
    base = {BIG: big, LONG: np.ones((3, 5), dtype=np.float32), "model.norm.weight": np.ones(7, dtype=np.float32)}
    changed = big.copy()
    changed[0, :4] = 1
    other = {**base, BIG: changed}
    for side, tensors in (("base", base), ("other", other)):
        (folder / side).mkdir()
        save_file(tensors, str(folder / side / "model.safetensors"))
    return folder / "base", folder / "other"


def screen_lines(app) -> list[str]:
    """The screen as drawn, one string a line."""
    return [strip.text for strip in app.screen._compositor.render_strips()]


def name_column(app, table) -> str:
    """The name column's text down the screen, its lines joined: a folded name reads whole."""
    left = table.region.x + 1  # a cell's padding
    width = table.columns[next(iter(table.columns))].width
    top = table.region.y + 1  # under the header
    lines = screen_lines(app)[top : table.region.bottom]
    return "".join(line[left : left + width].rstrip() for line in lines)


def test_shapes_hashes_and_names_whole_at_80x24(tmp_path):
    async def flow(app, pilot):
        table = app.query_one("#tensor-table")
        await pilot.press("2")
        await pilot.pause()
        lines = screen_lines(app)
        assert all(len(line) <= 80 for line in lines)
        assert table.virtual_size.width <= table.size.width  # nothing beyond the right edge
        rows = {t.name: t for t in app.report.tensors}
        big = rows[BIG]
        assert big.status == "changed"
        row = next(line for line in lines if "2048x2048" in line)  # the shape whole
        assert big.base.sha256[:8] in row and big.other.sha256[:8] in row  # both hashes whole, on its row
        for t in rows.values():
            assert any(t.base.sha256[:8] in line for line in lines)
        names = name_column(app, table)
        assert LONG in names and BIG in names  # folded, never cut
        assert len(LONG) > table.columns[next(iter(table.columns))].width

    run_app(*wide_pair(tmp_path), flow, size=(80, 24))


def test_the_columns_follow_the_width(tmp_path):
    """Wide, every column; narrowed to 80, the columns that give way go and the name folds;
    the cursor stays on its tensor."""

    async def flow(app, pilot):
        pane, table = app.query_one("TensorsPane"), app.query_one("#tensor-table")
        await pilot.press("2", "end")
        assert list(pane.columns) == list(views.TENSOR_COLUMNS)
        last = cursor_name(table)
        await pilot.resize_terminal(80, 24)
        await pilot.pause()
        assert "name" in pane.columns and {"shape", "base", "candidate"} <= set(pane.columns)
        assert "family" not in pane.columns
        assert sum(w + 2 for w in pane.columns.values()) <= 80 - 2
        assert cursor_name(table) == last

    run_app(*wide_pair(tmp_path), flow, size=(200, 40))


def test_layout_keeps_what_fits_and_names_fold_at_dots():
    widths = {"name": 45, "layer": 5, "shape": 9, "dtype": 5, "family": 30} | views.FIXED_WIDTHS
    wide = views.tensor_layout(widths, 200)
    assert list(wide) == list(views.TENSOR_COLUMNS) and wide["name"] == 45
    narrow = views.tensor_layout(widths, 78)
    assert next(iter(narrow)) == "name" and narrow["name"] >= views.NAME_MIN
    assert all(narrow[c] == widths[c] for c in ("status", "base", "candidate", "shape"))
    assert sum(w + views.CELL_PAD for w in narrow.values()) <= 78
    name = "model.layers.0.mlp.experts.0.down_proj.weight"
    assert views.name_lines(name, views.tensor_layout(widths, 98)["name"]) == 2  # not 3: layer, dtype... gave way
    very_long = views.tensor_layout(widths | {"name": 95}, 78)  # the columns shown whole stay
    assert set(views.TENSOR_WHOLE) < set(very_long) and very_long["name"] >= views.NAME_MIN
    for width in (5, 12, 20, 25, 27, 44, 45):
        points = views.fold_points(name, width)
        pieces = [name[a:b] for a, b in zip([0, *points], [*points, len(name)], strict=True)]
        assert "".join(pieces) == name and all(len(p) <= width for p in pieces)
        # at dots where that takes no more lines than folding anywhere would
        assert views.name_lines(name, width) == len(pieces) == -(-len(name) // width)
    assert views.fold_points(name, 27) == [27]  # "model.layers.0.mlp.experts." / "0.down_proj.weight"


@pytest.mark.parametrize(
    "name",
    [
        "model.layers.0.mlp.experts.0.down_proj.weight",
        "model.層.0.注意力.q_proj.weight",
        "evil\x1b[31m.name.weight",
        "a" * 60,
    ],
)
def test_a_folded_name_takes_the_lines_its_row_is_given(name):
    """The row's height (name_lines) is what the cell draws, wide characters and escapes too."""
    console = Console(width=200)
    for width in (7, 12, 20, 27, 80):
        lines = console.render_lines(views.FoldedName(inert(name)), console.options.update_width(width))
        assert len(lines) == views.name_lines(name, width)
        assert "".join(segment.text for line in lines for segment in line).replace(" ", "") == inert(name)


@pytest.mark.slow
def test_the_wheel_and_the_scrollbar_reach_both_ends(moe):
    """Scrolling the view (as the mouse wheel and the scrollbar do, the cursor left behind)
    draws the rows it reaches, to the last tensor and back to the first."""

    async def flow(app, pilot):
        pane, table = app.query_one("TensorsPane"), app.query_one("#tensor-table")
        await pilot.press("2")

        def window() -> list[str]:
            return [str(row.key.value) for row in table.ordered_rows]

        def reached(step: int) -> bool:
            if step > 0:
                return pane.first + pane.drawn == len(pane.shown) and table.scroll_y == table.max_scroll_y
            return pane.first == 0 and table.scroll_y == 0

        for step in (24, -24):
            for _ in range(400):
                table.scroll_relative(y=step, animate=False)
                await pilot.pause()
                if reached(step):
                    break
            assert window() == [t.name for t in pane.shown[pane.first : pane.first + pane.drawn]]
            end = pane.shown[-1] if step > 0 else pane.shown[0]
            assert window()[-1 if step > 0 else 0] == end.name
            assert table.scroll_y == (table.max_scroll_y if step > 0 else 0)
            assert table.row_count <= WINDOW

    run_app(*moe, flow)
