"""`surgeon tui BASE QUANT` with QUANT a GGUF: the read-only Overview and Tensors tabs, driven
through Textual's Pilot on the tiny GQA Llama of tests/gguf_fixtures.py and its Q8_0 quants:
its own (made from it) and a pruned copy's (differs in layers 0-1, head 5 of q_proj zeroed).
Bad input is one line and exit 2, before the screen."""

from __future__ import annotations

import asyncio
import threading

import pytest
from click.testing import CliRunner
from surgeon.tui.quant import READ_ONLY, QuantApp, tensor_cells, tensor_detail

from surgeon.cli.main import main
from surgeon.diff.quant_report import QuantTensor
from surgeon.errors import Cancelled
from surgeon.format.checkpoint import open_checkpoint
from tests.diff.test_quant_diff import pruned_copy
from tests.gguf_fixtures import convert_checkpoint, save_hf
from tests.tui.test_tui import compare_screenshots, screenshot, table_rows, text_of

HEAD = 5


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(base, its own Q8_0 GGUF, a Q8_0 GGUF of base with head HEAD pruned in layers 0-1)."""
    root = tmp_path_factory.mktemp("quant-tui")
    base = save_hf("llama", root / "base", seed=0)
    within = convert_checkpoint(base, root / "base.Q8_0.gguf", "llama", "Q8_0")
    pruned = convert_checkpoint(pruned_copy(base, root / "pruned", HEAD), root / "pruned.Q8_0.gguf", "llama", "Q8_0")
    return base, within, pruned


def run_quant(base, quant, flow, size=(100, 36), wait=True):
    async def main_():
        app = QuantApp(open_checkpoint(base), str(quant))
        async with app.run_test(size=size) as pilot:
            if wait:
                await settled(app, pilot)
            await flow(app, pilot)

    asyncio.run(main_())


async def settled(app, pilot) -> None:
    for _ in range(600):
        await asyncio.gather(*(worker.wait() for worker in app.workers), return_exceptions=True)
        await pilot.pause()
        if app.job is None:
            await pilot.pause()
            return
    raise AssertionError("the diff never finished")


def test_a_quant_made_from_the_base_says_so_on_both_tabs(pair):
    base, within, _ = pair

    async def flow(app, pilot):
        summary = text_of(app, "#quant-summary")
        assert summary.startswith("made from base: 29 of 29 tensors within their ")
        assert "rotary-unpermute (8 tensors)" in text_of(app, "#quant-sides")
        counts = text_of(app, "#quant-counts")
        assert "29 within, 0 differs, 0 unverified" in counts and "0 base-only, 0 quant-only" in counts
        assert "read-only quant pair: 29 of 29 tensors within their bounds" in text_of(app, "#status-line")
        await pilot.press("2")
        rows = table_rows(app.query_one("#quant-table"))
        assert len(rows) == 29 and {r[4] for r in rows} == {"within"}
        assert {r[1] for r in rows} == {"Q8_0", "F32"}
        assert app.focused is app.query_one("#quant-table")

    run_quant(base, within, flow)


def test_a_quant_of_a_pruned_model_shows_where_it_differs_and_the_head(pair):
    base, _, pruned = pair

    async def flow(app, pilot):
        assert text_of(app, "#quant-summary").startswith(
            "differs beyond quantization error in layers 0-1 (q_proj, o_proj): 4 of 29 tensors"
        )
        families = table_rows(app.query_one("#quant-families"))
        beyond = {r[0]: r[4] for r in families}
        assert beyond["self_attn.q_proj.weight"] == "0-1" and beyond["self_attn.o_proj.weight"] == "0-1"
        await pilot.press("2")
        await pilot.press("s")  # by verdict: the differing four first
        rows = table_rows(app.query_one("#quant-table"))
        assert [r[4] for r in rows[:5]] == ["differs"] * 4 + ["within"]
        assert "sorted by verdict" in text_of(app, "#quant-count")
        await pilot.press("slash", *"0 q_proj.weight")  # the filter, from the table
        await pilot.pause()
        rows = table_rows(app.query_one("#quant-table"))
        assert [r[0] for r in rows] == ["model.layers.0.self_attn.q_proj.weight"] and rows[0][4] == "differs"
        detail = text_of(app, "#quant-detail")
        assert "q_proj: NMSE per head over its rows (of 8" in detail and "1 beyond" in detail
        assert f"#{HEAD} 1 " in detail  # the zeroed head: NMSE 1
        await pilot.press("escape", "enter")  # back to the table, then its whole detail in a dialog
        assert app.screen.query_one("#dialog-title").render().plain == "model.layers.0.self_attn.q_proj.weight"
        await pilot.press("escape")
        box = app.query_one("#quant-filter")
        box.value = ""
        app.query_one("#quant-verdict").value = "not-within"
        await pilot.pause()
        assert len(table_rows(app.query_one("#quant-table"))) == 4

    run_quant(base, pruned, flow)


def test_plan_canary_and_write_keys_say_the_pair_is_read_only(pair):
    base, within, _ = pair

    async def flow(app, pilot):
        footer_keys = {binding.key for _, binding, enabled, _ in app.active_bindings.values() if binding.show}
        assert not footer_keys & {"c", "a", "e", "w", "p"}
        for key, what in (("c", "canary"), ("w", "write"), ("p", "prune")):
            await pilot.press(key)
            assert text_of(app, "#status-line").startswith(f"{what}: {READ_ONLY}")
        assert len(app.screen_stack) == 1  # no dialog, no job
        assert app.job is None

    run_quant(base, within, flow)


def test_the_diff_runs_in_a_job_that_x_cancels(pair, monkeypatch):
    import surgeon.tui.quant as quant_module

    base, within, _ = pair
    started = threading.Event()

    def held(base, spec, options, *, progress, cancel):
        progress.start("comparing", 100)
        started.set()
        cancel.wait(30)
        raise Cancelled()

    monkeypatch.setattr(quant_module, "diff_quant", held)

    async def flow(app, pilot):
        assert started.wait(10)
        await pilot.pause(0.3)
        assert app.job is not None and "diff: comparing" in text_of(app, "#job-label")
        assert text_of(app, "#quant-summary").startswith("Comparing every tensor")
        await pilot.press("x")
        await settled(app, pilot)
        assert "cancelled" in text_of(app, "#quant-summary") and "r to diff again" in text_of(app, "#quant-summary")
        assert "not compared" in text_of(app, "#status-line")

    run_quant(base, within, flow, wait=False)


def test_bad_input_is_one_line_before_the_screen(pair, tmp_path):
    base, within, _ = pair
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf at all")
    cases = [
        ([str(base), str(bad)], "bad.gguf"),
        ([str(base), str(tmp_path / "missing.gguf")], "missing.gguf"),
        ([str(within), str(base)], "a GGUF as BASE"),
        (["--tokenizer", str(base), str(base), str(within)], "--tokenizer"),
    ]
    other = save_hf("qwen3", tmp_path / "qwen3", seed=1)  # another architecture
    cases.append(([str(other), str(within)], "not a quant of this model"))
    for args, said in cases:
        result = CliRunner().invoke(main, ["tui", *args])
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and said in lines[0] and "Traceback" not in result.output


def test_a_hostile_tensor_name_stays_inert(pair):
    """A name with markup in it shows as written on both tabs, not as the style it names."""
    t = QuantTensor("model.[bold red]x[/].weight", "quant-only", None, None, "x", note="[link=evil]n[/link]")
    assert tensor_cells(t)[0].plain == "model.[bold red]x[/].weight"
    detail = tensor_detail(t, 76)
    assert "model.[bold red]x[/].weight" in detail.plain and "[link=evil]n[/link]" in detail.plain


def test_screenshot_of_the_tensors_tab_at_80x24(pair, tmp_path, monkeypatch):
    """The pruned pair's Tensors tab at 80x24, sorted by verdict: layer 0's o_proj under the cursor, its heads below."""
    monkeypatch.delenv("NO_COLOR", raising=False)
    base, _, pruned = pair
    shots = {}

    async def flow(app, pilot):
        await pilot.press("2", "s")
        shots["quant-tensors-80x24"] = await screenshot(app, pilot)

    run_quant(base, pruned, flow, size=(80, 24))
    compare_screenshots(shots, tmp_path)


def test_an_nvfp4_checkpoint_opens_as_a_quant_pair_too(tmp_path, pair):
    """An NVFP4 safetensors quant (and a Hub GGUF id, by the same route) opens the quant app:
    the scheme on the Overview, a pruned copy's quant differing in head HEAD."""
    from surgeon.cli.tui import _quant_spec
    from tests.quantized_fixtures import write_quantized

    base = pair[0]
    quant = tmp_path / "pruned-nvfp4"
    write_quantized(pruned_copy(base, tmp_path / "pruned", HEAD), quant, "modelopt-nvfp4")
    opened = _quant_spec(str(base), str(quant))
    assert opened is not None and not isinstance(opened, str)  # the checkpoint, opened

    async def flow(app, pilot):
        assert text_of(app, "#quant-summary").startswith("differs beyond quantization error in layers 0-1")
        assert "modelopt NVFP4 safetensors, llama" in text_of(app, "#quant-sides")

    async def main_():
        app = QuantApp(open_checkpoint(base), opened)
        async with app.run_test(size=(100, 36)) as pilot:
            await settled(app, pilot)
            await flow(app, pilot)

    asyncio.run(main_())
    result = CliRunner().invoke(main, ["tui", str(quant), str(base)])
    assert result.exit_code == 2 and "a quantized checkpoint as BASE" in result.output
