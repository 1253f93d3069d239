"""The TUI driven as a person would, through Textual's Pilot, on the bundled demo pair.

Each flow asserts on what the widgets show and on the files written. Three screens at two
sizes are compared with the golden SVGs in tests/tui/screenshots/; after a change that is
meant to show, look at the new ones and refresh the golden files with:
    SURGEON_UPDATE_SNAPSHOTS=1 python -m pytest tests/tui/test_tui.py -k screenshots
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from surgeon.tui.dialogs import BudgetDialog, ConfirmDialog, HelpScreen, MessageDialog, TensorDetail, WriteDialog
from surgeon.tui.panes import FILTER_DELAY, PAGE
from textual.command import CommandPalette
from textual.widgets import DataTable

from surgeon.demo import DEMO_CANDIDATE as CANDIDATE
from surgeon.demo import DEMO_MODEL as BASE
from surgeon.demo import DEMO_TEXT
from tests.helpers import FIXTURES, sha

SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"
UPDATE_SNAPSHOTS = "SURGEON_UPDATE_SNAPSHOTS"


EVAL_TOKENS = 256  # the eval's token budget in tests: a few seconds for the 9 plans of the demo pair


def run_app(flow, size=(100, 36), base=BASE, candidate=CANDIDATE, hashed=True):
    """Start the app on the pair, wait for the hashing to finish (unless `hashed` is False),
    then run `flow(app, pilot)`."""
    from surgeon.tui.app import SurgeonApp

    async def main():
        app = SurgeonApp(base, candidate, eval_tokens=EVAL_TOKENS)
        async with app.run_test(size=size) as pilot:
            if hashed:
                await settle(app, pilot)
            await flow(app, pilot)

    asyncio.run(main())


async def settle(app, pilot) -> None:
    """Until no job runs and every message it caused has been handled."""
    for _ in range(600):
        # A failed or cancelled job's worker raises from wait(); the app shows that itself.
        await asyncio.gather(*(worker.wait() for worker in app.workers), return_exceptions=True)
        await pilot.pause()
        if app.job is None:
            await pilot.pause()
            return
    raise AssertionError("a job never finished")


def text_of(app, selector: str) -> str:
    """What a Static or Label shows, as plain text (rich renderables drawn 200 wide)."""
    return _render_plain(app.screen.query_one(selector))


def table_rows(table) -> list[list[str]]:
    return [[getattr(c, "plain", str(c)) for c in table.get_row_at(i)] for i in range(table.row_count)]


async def type_into(pilot, selector: str, text: str) -> None:
    box = pilot.app.screen.query_one(selector)
    box.focus()
    box.value = ""
    await pilot.press(*text)
    await pilot.pause(FILTER_DELAY + 0.1)  # the Tensors tab filters once typing pauses
    await pilot.pause()


def hold(monkeypatch, owner, name: str) -> tuple[threading.Event, threading.Event]:
    """Make owner.name wait until released, so a test can act while a job is mid-way.
    Returns (entered, release)."""
    entered, release = threading.Event(), threading.Event()
    real = getattr(owner, name)

    def held(*args, **kwargs):
        entered.set()
        release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, held)
    return entered, release


def test_load_and_hash_fills_the_overview():
    async def flow(app, pilot):
        assert "16 of 112 tensors differ" in text_of(app, "#summary")
        rows = table_rows(app.query_one("#layer-map"))
        assert [r[0] for r in rows] == [str(n) for n in range(8)]
        assert all(r[1] == "candidate" for r in rows)
        assert rows[0][2] == "H" and rows[0][3] == "·"  # q_proj heads zeroed, k_proj identical
        zeroed = [r[-1] for r in rows]
        assert all(z.startswith("#") and z[1:].isdigit() for z in zeroed)  # one zeroed head per layer
        shards = table_rows(app.query_one("#shards"))
        assert [r[1] for r in shards] == ["changed", "changed"]
        assert shards[0][0] == "model-00001-of-00002.safetensors"

    run_app(flow)


def test_screen_is_usable_while_hashing(monkeypatch):
    """The hashing worker is held mid-way: tabs switch and help opens meanwhile."""
    import surgeon.diff.engine as diff_module

    entered, release = hold(monkeypatch, diff_module, "_hash_both")

    async def flow(app, pilot):
        await asyncio.to_thread(entered.wait, 30)
        await pilot.pause(0.3)
        assert app.job is not None and app.query_one("#job-bar").has_class("running")
        assert "hashing" in text_of(app, "#job-label")
        await pilot.press("2")
        assert app.query_one("TabbedContent").active == "tensors"
        assert "Hashing" in text_of(app, "#tensor-count")
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        release.set()
        await settle(app, pilot)
        assert app.report is not None
        assert not app.query_one("#job-bar").has_class("running")
        assert "112 of 112 tensors" in text_of(app, "#tensor-count")

    run_app(flow, hashed=False)


def test_filter_and_sort_tensors():
    async def flow(app, pilot):
        await pilot.press("2")
        table = app.query_one("#tensor-table")
        assert table.row_count == PAGE < 112  # a page drawn; the rest as the cursor nears the end
        assert "112 of 112 tensors" in text_of(app, "#tensor-count")
        table.focus()
        table.move_cursor(row=table.row_count - 1)  # as page-down to the last row drawn does
        await pilot.pause()
        assert table.row_count == 112
        assert table_rows(table)[-1][0] == app.report.tensors[-1].name
        await type_into(pilot, "#filter-text", "q_proj")
        assert table.row_count == 8
        assert "8 of 112 tensors" in text_of(app, "#tensor-count")
        await type_into(pilot, "#filter-layers", "2-3")
        assert [r[0] for r in table_rows(table)] == [
            "model.layers.2.self_attn.q_proj.weight",
            "model.layers.3.self_attn.q_proj.weight",
        ]
        await type_into(pilot, "#filter-layers", "2-x")
        assert app.query_one("#filter-layers").has_class("invalid")
        await type_into(pilot, "#filter-text", "")
        await type_into(pilot, "#filter-layers", "")
        app.query_one("#filter-status").value = "changed"
        await pilot.pause()
        assert table.row_count == 16
        assert {r[2] for r in table_rows(table)} == {"changed"}
        app.query_one("#tensor-table").focus()
        while app.query_one("TensorsPane").sort != "relative":
            await pilot.press("s")
        rel = [float(r[4]) for r in table_rows(table)]
        assert rel == sorted(rel, reverse=True)

    run_app(flow)


def test_open_a_tensor_shows_hashes_stats_and_heads():
    async def flow(app, pilot):
        await pilot.press("2")
        await type_into(pilot, "#filter-text", "layers.0.self_attn.q_proj")
        app.query_one("#tensor-table").focus()
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, TensorDetail)
        detail = app.screen.query_one("#tensor-detail")
        console_text = _render_plain(detail)
        tensor = next(t for t in app.report.tensors if t.name == "model.layers.0.self_attn.q_proj.weight")
        for full in (tensor.base.sha256, tensor.other.sha256):
            assert full[:40] in console_text.replace("\n", "").replace(" ", "")
        assert "elements changed" in console_text and "cosine" in console_text
        zeroed = tensor.heads.heads_with("zeroed")
        assert f"zeroed: {', '.join(map(str, zeroed))}" in console_text
        await pilot.press("escape")
        assert not isinstance(app.screen, TensorDetail)

    run_app(flow)


def _render_plain(widget) -> str:
    from rich.console import Console

    content = widget.content
    if isinstance(content, str):
        return content
    with open(os.devnull, "w") as sink:
        console = Console(width=200, record=True, file=sink)
        console.print(content)
    return console.export_text()


def test_toggle_a_range_space_undo_redo():
    async def flow(app, pilot):
        await pilot.press("3")
        await pilot.press("l", *"4-7", "enter")
        await pilot.pause()
        assert app.focused.id == "plan-map"  # enter hands the keys back to the map
        summary = text_of(app, "#plan-summary")
        assert "keep from candidate: 0-3" in summary and "rolled back to base: 4-7" in summary
        assert "shards written: 1 (model-00001-of-00002.safetensors)" in summary
        assert "1 stay byte-identical" in summary
        rows = table_rows(app.query_one("#plan-map"))
        assert [r[1] for r in rows] == ["candidate"] * 4 + ["base"] * 4
        assert rows[5][2] == "-" and rows[5][3] == "↺"  # KL alone not measured yet; q_proj rolled back
        await pilot.press("escape")  # back to the map
        await pilot.press("home", "space")  # layer 0 goes back too
        assert app.plan.keep == [1, 2, 3]
        await pilot.press("ctrl+z")
        assert app.plan.keep == [0, 1, 2, 3]
        await pilot.press("ctrl+z")
        assert app.plan.keep == list(range(8))
        await pilot.press("ctrl+y")
        assert app.plan.keep == [0, 1, 2, 3]
        overview = table_rows(app.query_one("#layer-map"))
        assert [r[1] for r in overview][4:] == ["base"] * 4  # both maps show the one plan
        await pilot.press("2")
        app.query_one("#filter-status").value = "plan:base"
        await pilot.pause()
        rolled_back = table_rows(app.query_one("#tensor-table"))
        assert sorted(int(r[1]) for r in rolled_back) == [4, 4, 5, 5, 6, 6, 7, 7]
        assert {r[3] for r in rolled_back} == {"base"}

    run_app(flow)


def test_bad_range_shows_an_error_dialog():
    async def flow(app, pilot):
        await pilot.press("3")
        await pilot.press("l", *"9-12", "enter")
        await pilot.pause()
        assert isinstance(app.screen, MessageDialog)
        assert "layer 9 does not exist" in _render_plain(app.screen.query_one("#dialog-text"))
        await pilot.press("enter")
        assert app.plan.keep == list(range(8))

    run_app(flow)


@pytest.mark.slow
@pytest.mark.usefixtures("shared_canary_cache")
def test_canary_runs_on_the_plan_and_is_kept_per_plan():
    async def flow(app, pilot):
        await pilot.press("c")
        await settle(app, pilot)
        status = text_of(app, "#canary-status")
        assert "Plan keep 0-7" in status and "canary FAILED" in status
        result = _render_plain(app.query_one("#canary-result"))
        assert "The capital of France is" in result and "Paris" in result and "drift" in result
        assert app.composed.runs == 1
        app.plan.keep_only("0")
        app.refresh_plan()
        await pilot.pause()
        assert "no canary run yet" in text_of(app, "#canary-status")
        await pilot.press("c")
        await settle(app, pilot)
        assert app.composed.runs == 2
        assert "Plan keep 0:" in text_of(app, "#canary-status")
        app.plan.undo()
        app.refresh_plan()
        await pilot.pause()
        assert "canary FAILED" in text_of(app, "#canary-status")  # back to 0-7: shown at once
        await pilot.press("c")  # already known: no run
        await settle(app, pilot)
        assert app.composed.runs == 2

    run_app(flow)


@pytest.mark.slow
@pytest.mark.usefixtures("shared_canary_cache")
def test_auto_plan_searches_and_sets_the_plan():
    """The demo pair and the canary (on the demo's own prompts) are deterministic, so the
    search is too: every prefix of the changed layers fails; layer 1 passes alone, then 2
    to 7 join it one by one, as `surgeon demo`'s budget search keeps 1-7."""

    async def flow(app, pilot):
        await pilot.press("a")
        await settle(app, pilot)
        steps = app.auto_steps
        assert [(s.how, s.layers, s.passed) for s in steps] == [
            ("prefix", list(range(8)), False),
            ("prefix", [0, 1, 2, 3], False),
            ("prefix", [0, 1], False),
            ("prefix", [0], False),
            *(("add", list(range(1, last + 1)), True) for last in range(1, 8)),
        ]
        assert app.plan.keep == [1, 2, 3, 4, 5, 6, 7]
        assert all(frozenset(s.layers) in app.canary_reports for s in steps)
        assert app.composed.runs == len(steps)  # each plan ran once; the rest came from memory
        assert "Plan keep 1-7: canary passed" in text_of(app, "#canary-status")
        shown = text_of(app, "#canary-auto-steps")
        assert shown.startswith("last auto search (found keep 1-7), 11 canary runs: prefix 0-7 fail, prefix 0-3 fail")
        await pilot.press("ctrl+z")
        assert app.plan.keep == list(range(8))
        assert "canary FAILED" in text_of(app, "#canary-status")  # the full plan's result, kept

    run_app(flow)


@pytest.mark.slow
def test_cancel_a_running_canary(monkeypatch):
    from surgeon.recover.canary import runner as canary_run

    real = canary_run.CanaryModel.generate

    async def flow(app, pilot):
        entered, release = hold(monkeypatch, canary_run.CanaryModel, "generate")
        await pilot.press("c")
        await asyncio.to_thread(entered.wait, 30)
        await pilot.press("x")
        release.set()
        await settle(app, pilot)
        assert app.canary_reports == {}
        assert "no canary run yet" in text_of(app, "#canary-status")
        assert not isinstance(app.screen, MessageDialog)  # a cancel is not an error
        monkeypatch.setattr(canary_run.CanaryModel, "generate", real)
        await pilot.press("c")  # the app is still usable after a cancel
        await settle(app, pilot)
        assert len(app.canary_reports) == 1

    run_app(flow)


def test_eval_shows_the_plan_and_each_layer_alone(monkeypatch):
    """e scores the plan and each changed layer alone in one pass; the numbers belong to
    exactly that plan, and the per-layer costs are measured once per pair."""
    from surgeon.quality.evaluate import EvalSession

    calls = []
    real = EvalSession.evaluate_plans

    def counted(self, plans):
        plans = [list(plan) for plan in plans]
        calls.append(plans)
        return real(self, plans)

    monkeypatch.setattr(EvalSession, "evaluate_plans", counted)

    async def flow(app, pilot):
        await pilot.press("3")
        assert "eval: not evaluated (press e)" in text_of(app, "#plan-eval")
        assert "KL alone: not evaluated (press e)" in text_of(app, "#plan-costs")
        await pilot.press("e")
        await settle(app, pilot)
        assert calls == [[list(range(8)), *[[n] for n in range(8)]]]
        full = app.eval_reports[frozenset(range(8))]
        assert 0 < full["tokens"] < EVAL_TOKENS  # the app's token budget reached the engine
        shown = text_of(app, "#plan-eval")
        # one line at 80 columns that names its text (issue 19); p99 and top-1 are on the Canary tab
        on = f"({full['tokens']:,} tokens of {app.session.eval_text_name})"
        assert f"ppl x{full['ppl_ratio']:.4f}  KL {full['kl_mean']:.4f}  {on}" in shown and "p99" not in shown
        assert f"top-1 {full['top1']:.1%}" in text_of(app, "#canary-status")

        kl = app.layer_kl
        assert sorted(kl) == list(range(8)) and all(value > 0 for value in kl.values())
        assert max(kl, key=kl.get) == 0  # the demo's costly layer
        costliest = sorted(kl, key=kl.get, reverse=True)
        listed = text_of(app, "#plan-costs").removeprefix("KL alone: costliest first ").split(", ")
        assert [int(item.split()[0]) for item in listed] == costliest
        rows = table_rows(app.query_one("#plan-map"))
        assert [r[2].split()[0] for r in rows] == [f"{kl[n]:.4f}" for n in range(8)]
        assert rows[0][2] == f"{kl[0]:.4f} ██████"  # the costliest layer's bar is full
        assert all(len(r[2].strip()) < len(rows[0][2]) for r in rows[4:])  # cheap layers: a short bar or none

        await pilot.press("home", "space")  # layer 0 goes back to the base: a plan not yet evaluated
        assert app.plan.keep == list(range(1, 8))
        assert "eval: not evaluated (press e)" in text_of(app, "#plan-eval")
        assert text_of(app, "#plan-costs").startswith("KL alone: costliest first 0 ")  # per layer: still known
        assert "eval: not evaluated (press e)" in text_of(app, "#canary-status")
        session = app.eval_session
        await pilot.press("e")
        await settle(app, pilot)
        assert calls[1:] == [[list(range(1, 8))]] and app.eval_session is session  # only the new plan
        rest = app.eval_reports[frozenset(range(1, 8))]
        assert f"KL {rest['kl_mean']:.4f}" in text_of(app, "#plan-eval")
        assert rest["kl_mean"] < full["kl_mean"]
        await pilot.press("4")
        assert f"eval: ppl x{rest['ppl_ratio']:.4f}  KL {rest['kl_mean']:.4f}" in text_of(app, "#canary-status")

        await pilot.press("ctrl+z")  # back to every layer: its numbers at once, no job
        assert app.job is None and f"KL {full['kl_mean']:.4f}" in text_of(app, "#canary-status")
        await pilot.press("e")  # already known
        await settle(app, pilot)
        assert len(calls) == 2

    run_app(flow)


def test_cancel_a_running_eval(monkeypatch):
    from surgeon.quality.evaluate import EvalSession

    real = EvalSession.evaluate_plans

    async def flow(app, pilot):
        entered, release = hold(monkeypatch, EvalSession, "evaluate_plans")
        await pilot.press("e")
        await asyncio.to_thread(entered.wait, 30)
        await pilot.pause(0.3)
        assert text_of(app, "#job-label").startswith("eval")
        await pilot.press("x")
        release.set()
        await settle(app, pilot)
        assert app.eval_reports == {} and app.layer_kl is None
        assert not isinstance(app.screen, MessageDialog)  # a cancel is not an error
        assert "not evaluated (press e)" in text_of(app, "#plan-eval")
        monkeypatch.setattr(EvalSession, "evaluate_plans", real)
        await pilot.press("e")  # the same session, usable after a cancel
        await settle(app, pilot)
        assert frozenset(range(8)) in app.eval_reports and sorted(app.layer_kl) == list(range(8))

    run_app(flow)


@pytest.mark.slow
@pytest.mark.usefixtures("shared_canary_cache")
def test_budget_plan_keeps_what_fits_and_the_write_records_it(tmp_path):
    async def flow(app, pilot):
        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert {"Evaluate plan", "Auto plan by quality budget"} <= titles
        app.action_budget_plan()
        await pilot.pause()
        assert isinstance(app.screen, BudgetDialog)
        await type_into(pilot, "#budget-kl", "much")
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, BudgetDialog) and app.job is None  # refused in the dialog
        await type_into(pilot, "#budget-kl", "0.05")
        await pilot.press("enter")
        await settle(app, pilot)

        steps, keep = app.auto_steps, app.plan.keep
        assert (steps[0].how, steps[0].layers, steps[0].passed) == ("all", list(range(8)), False)
        assert sorted(s.layers[0] for s in steps if s.how == "alone") == list(range(8))
        assert keep and 0 not in keep  # the costly layer goes back to the base
        assert app.eval_reports[frozenset(keep)]["kl_mean"] <= 0.05
        assert (steps[-1].how, steps[-1].layers, steps[-1].passed) == ("canary", keep, True)
        found = text_of(app, "#canary-auto-steps")
        assert "last budget search (KL <= 0.05; found keep" in found and "8 layers alone" in found
        assert "eval: ppl x" in text_of(app, "#plan-eval")  # the plan it found has its numbers

        manifest = await write_plan(app, pilot, tmp_path / "budget")
        record, quality = manifest["salvage"], manifest["quality"]
        assert record["kept_layers"] == keep
        assert [s["how"] for s in record["auto"]] == [s.how for s in steps]
        assert quality["budget"] == {"max_kl": 0.05, "max_ppl_ratio": None}
        assert quality["eval"] == app.eval_reports[frozenset(keep)]
        assert quality["layer_kl"] == {str(n): app.layer_kl[n] for n in range(8)}
        assert quality["text"]["source"] == DEMO_TEXT.name  # the demo model's own text, named, not its path

        app.plan.keep_only("0,2")  # a plan not evaluated: the manifest claims no quality for it
        app.refresh_plan()
        assert "quality" not in await write_plan(app, pilot, tmp_path / "unmeasured")
        await pilot.press("e")
        await settle(app, pilot)
        quality = (await write_plan(app, pilot, tmp_path / "measured"))["quality"]
        assert quality["budget"] is None and quality["eval"] == app.eval_reports[frozenset({0, 2})]

    run_app(flow)


@pytest.mark.slow
def test_write_and_verify(tmp_path):
    output = tmp_path / "salvaged"

    async def flow(app, pilot):
        await pilot.press("3")
        await pilot.press("l", *"4-7", "enter", "escape")
        await pilot.press("w")
        await pilot.pause()
        assert isinstance(app.screen, WriteDialog)
        description = text_of(app, "#write-description")
        assert "rolled back to base: 4-7" in description
        await type_into(pilot, "#write-output", str(output))
        await pilot.press("enter")
        await settle(app, pilot)
        assert isinstance(app.screen, MessageDialog)
        assert "verified" in _render_plain(app.screen.query_one("#dialog-text"))
        assert app.last_verify.ok

    run_app(flow)
    manifest = json.loads((output / "prune_manifest.json").read_text())
    assert manifest["salvage"]["kept_layers"] == [0, 1, 2, 3]
    assert manifest["written"]["layers"] == [0, 1, 2, 3]
    assert sha(output / "model-00002-of-00002.safetensors") == sha(BASE / "model-00002-of-00002.safetensors")
    assert sha(output / "model-00001-of-00002.safetensors") != sha(BASE / "model-00001-of-00002.safetensors")


async def write_plan(app, pilot, output: Path) -> dict:
    """Write the current plan to `output` through the dialog; its manifest."""
    await pilot.press("w")
    await type_into(pilot, "#write-output", str(output))
    await pilot.press("enter")
    await settle(app, pilot)
    assert app.last_verify is not None and app.last_verify.ok
    await pilot.press("escape")  # the verify dialog
    return json.loads((output / "prune_manifest.json").read_text())


@pytest.mark.slow
@pytest.mark.usefixtures("shared_canary_cache")
def test_write_records_the_plans_canary_and_the_auto_search(tmp_path):
    """A TUI write records what `salvage --auto` records: the canary the plan was judged by
    (null only when none ran on that plan) and the search's steps when the search found it."""

    async def flow(app, pilot):
        await pilot.press("c")  # the canary on the plan as it opens: every changed layer kept
        await settle(app, pilot)
        judged = app.canary_reports[frozenset(range(8))].to_json()
        record = (await write_plan(app, pilot, tmp_path / "full"))["salvage"]
        assert record["canary_before"] == judged and not record["canary_before"]["passed"]
        assert record["canary_before"]["composed_layers"] == list(range(8))
        assert record["auto"] is None  # no search found this plan

        await pilot.press("a")
        await settle(app, pilot)
        found, steps = app.plan.keep, app.auto_steps
        record = (await write_plan(app, pilot, tmp_path / "auto"))["salvage"]
        assert record["kept_layers"] == found
        none = {"kl_mean": None, "ppl_ratio": None}  # a canary search measures no eval numbers
        assert record["auto"] == [{"layers": s.layers, "passed": s.passed, "how": s.how, **none} for s in steps]
        assert record["auto"][0] == {"layers": list(range(8)), "passed": False, "how": "prefix", **none}
        known = app.canary_reports.get(frozenset(found))  # the empty plan is the base: never run
        assert record["canary_before"] == (known.to_json() if known is not None else None)
        assert not found or record["canary_before"]["passed"]  # the search keeps only a plan that passed

        app.plan.keep_only("0,2")  # a plan neither the canary nor the search has seen
        app.refresh_plan()
        assert frozenset({0, 2}) not in app.canary_reports
        record = (await write_plan(app, pilot, tmp_path / "manual"))["salvage"]
        assert record["kept_layers"] == [0, 2]
        assert record["canary_before"] is None and record["auto"] is None

    run_app(flow)


def test_an_engine_error_gets_the_tuis_own_hint():
    """Engine messages name no CLI option; the TUI adds how to fix it here."""
    pair = FIXTURES / "gemma4-tiny"  # weights only: no tokenizer

    async def flow(app, pilot):
        await pilot.press("c")
        await settle(app, pilot)
        assert isinstance(app.screen, MessageDialog)
        text = text_of(app, "#dialog-text")
        assert "has no tokenizer files" in text and "; pass --tokenizer" not in text
        assert "surgeon tui --tokenizer DIR" in text

    run_app(flow, base=pair / "base", candidate=pair / "pruned")


@pytest.mark.slow
def test_write_over_an_existing_folder_asks_first(tmp_path):
    """Only what --force may replace is offered (the engine's rule), and then it asks."""
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    output = shutil.copytree(BASE, tmp_path / "old-checkpoint")

    async def flow(app, pilot):
        await pilot.press("w")
        await type_into(pilot, "#write-output", str(output))
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, WriteDialog)  # still open, to fix the path
        assert app.job is None
        app.screen.query_one("#write-replace").value = True
        await type_into(pilot, "#write-output", str(taken))
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, WriteDialog) and app.job is None  # refused: no checkpoint, no output
        assert "not replacing it: it holds keep.txt, which no" in [n.message for n in app._notifications][-1]
        await type_into(pilot, "#write-output", str(output))
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmDialog)
        question = _render_plain(app.screen.query_one("#dialog-text"))
        assert "exists: a checkpoint" in question and "Everything in it will be deleted" in question
        await pilot.press("escape")  # no
        assert isinstance(app.screen, WriteDialog) and app.job is None
        assert (taken / "keep.txt").read_text() == "mine" and (output / "config.json").is_file()
        await type_into(pilot, "#write-output", str(BASE / "inside"))
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, WriteDialog)  # refused: inside an input
        await type_into(pilot, "#write-output", str(output))
        await pilot.press("enter")
        await pilot.pause()
        await pilot.press("y")
        await settle(app, pilot)
        assert app.last_verify is not None and app.last_verify.ok

    run_app(flow)
    assert (taken / "keep.txt").read_text() == "mine"
    assert (output / "prune_manifest.json").is_file()


async def write_then_ask_to_quit(app, pilot, output: Path, entered: threading.Event) -> None:
    """Start writing the plan to `output`, wait until the held write is under way, press q."""
    await pilot.press("w")
    await type_into(pilot, "#write-output", str(output))
    await pilot.press("enter")
    await asyncio.to_thread(entered.wait, 30)
    await pilot.press("q")
    await pilot.pause()
    assert isinstance(app.screen, ConfirmDialog)


async def wait_until_closed(app, pilot, seconds: float = 60) -> None:
    """Until the app has exited; fails if it is still running after `seconds` (a cancelled
    write or prune cleans up before the app goes, which takes a moment on a busy machine)."""
    for _ in range(int(seconds / 0.05)):
        if not app.is_running:
            return
        await pilot.pause(0.05)
    raise AssertionError(f"the app is still running {seconds:g} s after quitting")


@pytest.mark.slow
def test_quit_during_a_write_asks_then_leaves_nothing(tmp_path, monkeypatch):
    from surgeon.format import writer

    output = tmp_path / "out"
    entered, release = hold(monkeypatch, writer, "write_all")

    async def flow(app, pilot):
        await write_then_ask_to_quit(app, pilot, output, entered)
        await pilot.press("escape")  # "no": the write goes on
        assert app.job is not None and app.job.name == "write"
        await pilot.press("q")
        await pilot.pause()
        await pilot.press("y")
        release.set()
        await wait_until_closed(app, pilot)

    run_app(flow)
    assert not output.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


@pytest.mark.slow
def test_prune_streams_layers_and_opens_the_result(tmp_path):
    output = tmp_path / "pruned-again"

    async def flow(app, pilot):
        await pilot.press("5")
        await type_into(pilot, "#prune-frac", "0.25")
        await type_into(pilot, "#prune-layers", "0-1")
        await type_into(pilot, "#prune-output", str(output))
        await pilot.press("enter")  # on to the next field: it starts nothing
        assert app.focused.id == "prune-run" and app.job is None
        await pilot.press("enter")  # the Start button: it asks first, naming the folder
        await pilot.pause()
        assert isinstance(app.screen, ConfirmDialog) and app.job is None
        assert str(output) in text_of(app, "#dialog-text")
        await pilot.press("y")
        await settle(app, pilot)
        assert isinstance(app.screen, ConfirmDialog)  # the old candidate's plan would go
        await pilot.press("y")
        await settle(app, pilot)  # the new pair's hashing
        rows = table_rows(app.query_one("#prune-progress"))
        assert [r[0] for r in rows] == ["0", "1"]  # no layer after the last pruned one runs
        assert [r[1] for r in rows] == ["pruned"] * 2
        assert all(len(r[2].split()) == 2 and r[2].startswith("#") for r in rows[:2])  # 2 of 8 heads each, "#1 #5"
        assert all(0 < float(r[3]) < 1 for r in rows[:2])
        assert app.candidate == output
        assert app.report is not None and app.report.layers_changed() == [0, 1]
        assert app.query_one("TabbedContent").active == "overview"
        assert app.plan.keep == [0, 1]

    run_app(flow)
    assert (output / "prune_manifest.json").is_file()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("#prune-frac", "half", "fraction 'half': the fraction of heads to prune must be in [0, 1)"),
        ("#prune-frac", "1", "fraction '1': the fraction of heads to prune must be in [0, 1)"),
        ("#prune-layers", "6-9", "layers '6-9': layer 8 does not exist (0-7)"),
        ("#prune-layers", "5-3", "layers '5-3': use 'all' or ranges like 0-3,7"),
    ],
)
def test_bad_prune_options_show_a_dialog(field, value, message):
    async def flow(app, pilot):
        await pilot.press("5")
        await type_into(pilot, field, value)
        app.query_one("#prune-run").press()  # the options are checked before the question
        await pilot.pause()
        assert isinstance(app.screen, MessageDialog)
        assert message in _render_plain(app.screen.query_one("#dialog-text"))
        assert app.job is None

    run_app(flow)


def test_the_prune_form_says_the_heads_the_fraction_prunes():
    """Issue 19: the line under the fraction follows what is typed, in the engine's count
    (the demo's layers have 8 query heads: 30% is 2.4 heads, and prune takes 2)."""

    async def flow(app, pilot):
        await pilot.press("5")
        assert text_of(app, "#prune-heads").strip() == "pruning 1 of 8 query heads in each of layers 0-7 (12.5%)"
        await type_into(pilot, "#prune-frac", "0.3")
        await type_into(pilot, "#prune-layers", "5")
        said = "2 of 8 query heads in layer 5 (25%; asked 30%)"
        assert text_of(app, "#prune-heads").strip() == f"pruning {said}"
        app.query_one("#prune-run").press()  # the question says it too
        await pilot.pause()
        assert isinstance(app.screen, ConfirmDialog) and f"Pruning {said}." in text_of(app, "#dialog-text")
        await pilot.press("escape")
        await pilot.pause()
        await type_into(pilot, "#prune-frac", "half")
        assert text_of(app, "#prune-heads").strip() == ""  # Start says what is wrong with it

    run_app(flow)


def test_the_prune_form_has_the_engines_defaults_range_and_words(tmp_path):
    """The form's fraction is checked by PruneOptions itself: 0 (prune nothing) is accepted
    and 1 refused in the engine's words, as --prune-frac does (it used to say 0 < f < 1)."""
    from surgeon.tui.panes import prune_request

    from surgeon.errors import SurgeonError
    from surgeon.prune.options import PRUNE_DEFAULTS, PruneOptions
    from surgeon.runtime.settings import RunSettings

    form = {"fraction": "0", "layers": "all", "importance": "recon", "heal": "lstsq", "output": str(tmp_path / "o")}
    options, output = prune_request(form, BASE, 8, tmp_path)
    assert (options.prune_frac, output, options.run) == (0.0, tmp_path / "o", RunSettings(tokenizer=str(tmp_path)))
    with pytest.raises(SurgeonError) as engine:
        PruneOptions(prune_frac=1.0).validate()
    for bad in ("1", "-0.5", "nan", "half"):
        with pytest.raises(SurgeonError) as refused:
            prune_request(form | {"fraction": bad}, BASE, 8, None)
        assert str(refused.value) == f"fraction {bad!r}: {engine.value}, e.g. {PRUNE_DEFAULTS.prune_frac:g}"


@pytest.mark.slow
def test_quit_question_goes_when_the_write_ends_first(tmp_path, monkeypatch):
    from surgeon.format import writer

    output = tmp_path / "out"
    entered, release = hold(monkeypatch, writer, "write_all")

    async def flow(app, pilot):
        await write_then_ask_to_quit(app, pilot, output, entered)
        release.set()  # the write finishes while the question is up
        await settle(app, pilot)
        assert isinstance(app.screen, MessageDialog)  # the verify result, not the stale question
        assert not any(isinstance(screen, ConfirmDialog) for screen in app.screen_stack)
        assert app.is_running and app.last_verify.ok

    run_app(flow)
    assert (output / "prune_manifest.json").is_file()


def test_cancelled_hashing_says_how_to_start_again(monkeypatch):
    import surgeon.diff.engine as diff_module

    entered, release = hold(monkeypatch, diff_module, "_hash_both")

    async def flow(app, pilot):
        await asyncio.to_thread(entered.wait, 30)
        await pilot.press("x")
        release.set()
        await settle(app, pilot)
        assert app.report is None
        assert "Press r to hash again" in text_of(app, "#summary")
        monkeypatch.undo()
        await pilot.press("r")
        await settle(app, pilot)
        assert app.report is not None and "16 of 112 tensors differ" in text_of(app, "#summary")

    run_app(flow, hashed=False)


@pytest.mark.slow
def test_quit_during_a_prune_asks_first(tmp_path, monkeypatch):
    from surgeon.prune import engine as prune_module

    output = tmp_path / "pruned"
    entered, release = hold(monkeypatch, prune_module._Run, "_layer")

    async def flow(app, pilot):
        await pilot.press("5")
        await type_into(pilot, "#prune-output", str(output))
        await pilot.press("escape", "p", "y")  # out of the box, start, confirm
        await asyncio.to_thread(entered.wait, 30)
        await pilot.press("q")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmDialog)
        assert "A prune is running" in _render_plain(app.screen.query_one("#dialog-text"))
        await pilot.press("y")
        release.set()
        await wait_until_closed(app, pilot)

    run_app(flow)
    assert not output.exists()


def test_command_palette_has_every_action():
    async def flow(app, pilot):
        titles = {c.title for c in app.get_system_commands(app.screen)}
        for title in ("Run canary", "Write plan", "Start prune", "Undo plan change", "Cancel job", "Rollback plan"):
            assert title in titles
        await pilot.press("ctrl+p")
        await pilot.pause()
        assert isinstance(app.screen, CommandPalette)
        await pilot.press(*"Rollback plan")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await pilot.pause()
        assert app.query_one("TabbedContent").active == "plan"

    run_app(flow)


@pytest.mark.slow
@pytest.mark.usefixtures("shared_canary_cache")
def test_usable_at_80x24():
    async def flow(app, pilot):
        layer_map = app.query_one("#layer-map")
        assert layer_map.size.height >= 8  # the whole tiny map is visible
        assert layer_map.virtual_size.width <= 80
        await pilot.press("3")
        assert app.query_one("#plan-map").size.height >= 5
        await pilot.press("e")
        await settle(app, pilot)
        plan_map = app.query_one("#plan-map")
        assert plan_map.size.height >= plan_map.row_count + 1  # every layer and its KL, with the header
        assert plan_map.virtual_size.width <= 80
        assert app.query_one("#plan-costs").size.height == 1
        await pilot.press("c")
        await settle(app, pilot)
        assert app.query_one("#canary-scroll").size.height >= 8

    run_app(flow, size=(80, 24))


async def screenshot(app, pilot) -> str:
    """The screen as an SVG, the same bytes on every run: the notifications go first, since
    they time out on the wall clock, and the layout they leave settles before the shot (in
    CI, under load, a shot taken at once caught a scrollbar of the layout in between).
    Nothing else needs normalising: a screen rendered twice gives the same SVG (its ids are
    hashes of its content), checked on these six screens."""
    app.clear_notifications()
    await pilot.wait_for_scheduled_animations()
    for _ in range(3):
        await pilot.pause()
    # A table's cached lines can keep a layout in between (the layer map's last cell drawn in
    # the row's colour or not, in the 160x48 Overview, depending on what ran before): drawn afresh.
    for table in app.screen.query(DataTable):
        table._clear_caches()
        table.refresh()
    await pilot.pause()
    return app.export_screenshot()


def compare_screenshots(shots: dict[str, str], new_folder: Path) -> None:
    """Each shot against its golden file tests/tui/screenshots/<name>.svg. A shot that differs
    is written into `new_folder` to look at; SURGEON_UPDATE_SNAPSHOTS=1 rewrites the golden
    files instead."""
    if os.environ.get(UPDATE_SNAPSHOTS) == "1":
        for name, svg in shots.items():
            (SCREENSHOTS / f"{name}.svg").write_text(svg, encoding="utf-8")
        return
    differ = []
    for name, svg in shots.items():
        golden = SCREENSHOTS / f"{name}.svg"
        if not golden.is_file() or golden.read_text(encoding="utf-8") != svg:
            (new_folder / f"{name}.svg").write_text(svg, encoding="utf-8")
            differ.append(name)
    assert not differ, (
        f"{', '.join(differ)}: the screen differs from its golden SVG in {SCREENSHOTS}; the new SVG is in "
        f"{new_folder}. Open both in a browser; if the new one is right, update the golden files with "
        f"{UPDATE_SNAPSHOTS}=1 python -m pytest tests/tui/test_tui.py -k screenshots"
    )


@pytest.mark.slow
@pytest.mark.usefixtures("shared_canary_cache")
@pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])
def test_screenshots(tmp_path, monkeypatch, size):
    """The Overview, the Plan with 4-7 rolled back and the Canary's result, as the golden SVGs."""
    monkeypatch.delenv("NO_COLOR", raising=False)  # the app would draw in monochrome
    tag = f"{size[0]}x{size[1]}"
    shots = {}

    async def flow(app, pilot):
        shots[f"overview-{tag}"] = await screenshot(app, pilot)
        await pilot.press("3")
        await pilot.press("l", *"4-7", "enter", "escape")
        await pilot.pause()
        shots[f"plan-{tag}"] = await screenshot(app, pilot)
        await pilot.press("c")
        await settle(app, pilot)
        shots[f"canary-{tag}"] = await screenshot(app, pilot)

    run_app(flow, size=size)
    assert list(shots) == [f"{name}-{tag}" for name in ("overview", "plan", "canary")]
    compare_screenshots(shots, tmp_path)


def test_each_tab_key_shows_its_tab_with_the_keys_on_its_table():
    """One tabs table drives the tab strip, the number keys, the focus, the palette and help."""
    from surgeon.tui.dialogs import HELP
    from surgeon.tui.tabs import TABS
    from textual.widgets import TabbedContent

    async def flow(app, pilot):
        assert [str(tab.label) for tab in app.query("Tab")] == [
            "1 Overview",
            "2 Tensors",
            "3 Plan",
            "4 Canary",
            "5 Prune",
        ]
        for tab in reversed(TABS):
            await pilot.press(tab.key)
            assert app.query_one(TabbedContent).active == tab.id
            assert app.focused is app.query_one(tab.focus)
        commands = [command.title for command in app.get_system_commands(app.screen)]
        tab_commands = ["Overview", "Tensors", "Rollback plan", "Canary tab", "Prune tab"]
        assert [title for title in commands if title in tab_commands] == tab_commands

    run_app(flow)
    assert "| `1`-`5` | Overview, Tensors, Plan, Canary, Prune |" in HELP


def test_pane_buttons_reach_the_app():
    """The Plan tab's buttons and the Canary tab's cancel post messages that the app acts on."""

    async def flow(app, pilot):
        await pilot.press("3")
        await type_into(pilot, "#plan-range", "4-7")
        app.query_one("#plan-roll-back").press()
        await pilot.pause()
        assert app.plan.keep == [0, 1, 2, 3]
        app.query_one("#plan-restore").press()  # the same range kept again: every layer
        await pilot.pause()
        assert app.plan.keep == list(range(8))
        app.query_one("#plan-keep-only").press()
        await pilot.pause()
        assert app.plan.keep == [4, 5, 6, 7]
        await pilot.press("4")
        app.query_one("#canary-cancel").press()
        await pilot.pause()
        assert [n.message for n in app._notifications][-1] == "Nothing is running"

    run_app(flow)


def test_the_cli_and_the_tui_show_each_status_in_one_style():
    from surgeon.tui import views

    from surgeon.diff import render_terminal, statuses
    from surgeon.diff.statuses import SHARD_STATUSES, STATUSES

    assert render_terminal.STATUS_STYLE is statuses.STATUS_STYLE and views.STATUS_STYLE is statuses.STATUS_STYLE
    assert set(STATUSES) | set(SHARD_STATUSES) <= set(statuses.STATUS_STYLE)


def test_importing_surgeon_never_imports_textual():
    code = (
        "import sys, surgeon, surgeon.cli.main, surgeon.recover.plan, surgeon.recover.salvage\n"
        "import surgeon.recover.verify, surgeon.recover.render\n"
        "assert 'textual' not in sys.modules, 'textual imported'\n"
        "assert 'tui' not in sys.modules, 'tui imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tui_command_rejects_bad_input_in_one_line(tmp_path):
    from click.testing import CliRunner

    from surgeon.cli.main import main

    result = CliRunner().invoke(main, ["tui", str(BASE)])
    assert result.exit_code == 2 and "give both BASE and CANDIDATE" in result.output
    result = CliRunner().invoke(main, ["tui", str(BASE), str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_a_pair_salvage_cannot_write_is_explained_not_written(tmp_path):
    from tests.helpers import make_variant

    candidate = make_variant(tmp_path / "dropped", src=CANDIDATE, drop=("model.norm.weight",))

    async def flow(app, pilot):
        assert "1 removed" in text_of(app, "#summary")
        await pilot.press("w")
        await pilot.pause()
        assert isinstance(app.screen, MessageDialog)
        assert "model.norm.weight: removed in the candidate" in text_of(app, "#dialog-text")
        await pilot.press("enter")
        await pilot.press("c")
        await settle(app, pilot)
        assert isinstance(app.screen, MessageDialog)
        assert "the canary composes changed layers only" in text_of(app, "#dialog-text")

    run_app(flow, candidate=candidate)


def inside(widget, screen) -> bool:
    """The widget is drawn whole on the screen, inside its dialog's box."""
    box = screen.query_one("#dialog").region
    return screen.region.contains_region(widget.region) and box.contains_region(widget.region)


def test_every_dialog_fits_at_80x24_with_its_buttons_in_sight():
    """At 80x24 the write dialog's buttons were drawn below the screen; each dialog now scrolls
    its body with its buttons docked in the box."""
    long_text = "\n".join(f"line {n} of a long message" for n in range(60))
    openers = {
        "write": lambda app: app.action_write(),
        "confirm": lambda app: app.push_screen(ConfirmDialog(long_text)),
        "budget": lambda app: app.action_budget_plan(),
        "help": lambda app: app.action_help(),
        "tensor detail": lambda app: app.open_tensor("model.layers.0.self_attn.q_proj.weight"),
        "message": lambda app: app.show_error("A long error", long_text),
    }
    kinds = {
        "write": WriteDialog,
        "confirm": ConfirmDialog,
        "budget": BudgetDialog,
        "help": HelpScreen,
        "tensor detail": TensorDetail,
        "message": MessageDialog,
    }

    async def flow(app, pilot):
        for name, opener in openers.items():
            opener(app)
            await pilot.pause()
            screen = app.screen
            assert isinstance(screen, kinds[name]), name
            buttons = list(screen.query("#dialog-buttons Button"))
            assert buttons, name
            assert all(inside(button, screen) for button in buttons), (name, [b.region for b in buttons])
            assert screen.query_one("#dialog").region.bottom <= screen.region.bottom - 1, name  # the footer shows
            await pilot.press("escape")
            await pilot.pause()
            assert not isinstance(app.screen, kinds[name]), name
        await pilot.press("w")
        await pilot.pause()
        assert app.focused.id == "write-output"  # the keys go to the folder box, not the dialog's frame
        for box in ("#write-output", "#write-replace"):  # in sight without scrolling: the plan's details scroll
            assert inside(app.screen.query_one(box), app.screen), box

    run_app(flow, size=(80, 24))


@pytest.mark.slow
def test_enter_in_a_prune_field_starts_nothing(tmp_path):
    output = tmp_path / "never"

    async def flow(app, pilot):
        await pilot.press("5")
        await type_into(pilot, "#prune-frac", "0.25")
        await pilot.press("enter")
        assert app.focused.id == "prune-layers"  # enter moves on to the next field
        await type_into(pilot, "#prune-output", str(output))
        await pilot.press("enter")
        await pilot.pause()
        assert app.job is None and not isinstance(app.screen, ConfirmDialog)
        shown = {active.binding.description for active in app.screen.active_bindings.values() if active.binding.show}
        assert "Start prune" in shown  # in the footer

    run_app(flow)
    assert not output.exists()


@pytest.mark.slow
def test_a_cancelled_prune_question_writes_nothing(tmp_path):
    output = tmp_path / "never"

    async def flow(app, pilot):
        await pilot.press("5")
        await type_into(pilot, "#prune-output", str(output))
        app.query_one("#prune-run").press()
        await pilot.pause()
        assert isinstance(app.screen, ConfirmDialog)
        question = text_of(app, "#dialog-text")
        assert str(output) in question and "fraction 0.125" in question
        await pilot.press("escape")
        await pilot.pause()
        assert app.job is None and not isinstance(app.screen, ConfirmDialog)
        assert [n.message for n in app._notifications][-1] == "Prune not started; nothing was written"

    run_app(flow)
    assert not output.exists()


def test_each_layer_map_explains_its_symbols_under_it():
    async def flow(app, pilot):
        for tab, map_id, legend_id in (("1", "#layer-map", "#map-legend"), ("3", "#plan-map", "#plan-legend")):
            await pilot.press(tab)
            legend = app.query_one(legend_id)
            for words in ("· identical", "● changed", "H heads zeroed", "↺ rolled back"):
                assert words in text_of(app, legend_id)
            assert legend.region.y == app.query_one(map_id).region.bottom  # the line right under the map
            assert legend.size.height == 1

    run_app(flow, size=(80, 24))


def test_job_bar_names_a_phase_only_when_it_says_more(monkeypatch):
    from surgeon.tui.jobs import job_label

    import surgeon.diff.engine as diff_module

    assert job_label("hashing", "hashing") == "hashing"
    assert job_label("hashing", "comparing") == "hashing: comparing"
    assert job_label("canary", "") == "canary"
    entered, release = hold(monkeypatch, diff_module, "_hash_both")

    async def flow(app, pilot):
        await asyncio.to_thread(entered.wait, 30)
        await pilot.pause(0.3)
        assert text_of(app, "#job-label") == "hashing"
        await pilot.press("x")
        release.set()
        await settle(app, pilot)
        message = [n.message for n in app._notifications][-1]
        assert message == "hashing cancelled: the pair is not compared (r hashes again)"
        assert "written" not in message

    run_app(flow, hashed=False)


def test_a_canary_that_cannot_run_says_so(tmp_path):
    from tests.helpers import make_variant

    candidate = make_variant(tmp_path / "dropped", src=CANDIDATE, drop=("model.norm.weight",))

    async def flow(app, pilot):
        await pilot.press("c")
        await settle(app, pilot)
        assert isinstance(app.screen, MessageDialog)
        assert text_of(app, "#dialog-title").strip() == "canary could not run"
        assert "the canary composes changed layers only" in text_of(app, "#dialog-text")

    run_app(flow, candidate=candidate)


def test_space_on_an_identical_layer_is_a_toast_not_a_dialog(tmp_path):
    import numpy as np

    from surgeon.format.checkpoint import open_checkpoint
    from tests.helpers import make_variant

    name = "model.layers.0.self_attn.q_proj.weight"
    shape = open_checkpoint(BASE).tensors[name].shape
    candidate = make_variant(tmp_path / "one-layer", src=BASE, replace={name: np.zeros(shape, np.float32)})

    async def flow(app, pilot):
        assert app.report.layers_changed() == [0]
        await pilot.press("down", "space")  # layer 1: identical
        await pilot.pause()
        assert not isinstance(app.screen, MessageDialog)
        assert "layer 1 is identical" in [n.message for n in app._notifications][-1]
        assert app.plan.keep == [0]

    run_app(flow, candidate=candidate)


def test_a_file_pair_compares_those_files_and_refuses_what_needs_folders():
    from surgeon.cli.tui import checkpoint_path

    shard = "model-00002-of-00002.safetensors"
    assert checkpoint_path(str(CANDIDATE / shard)) == (CANDIDATE / shard).resolve()  # not its folder
    assert checkpoint_path(str(CANDIDATE)) == CANDIDATE.resolve()

    async def flow(app, pilot):
        summary = text_of(app, "#summary")
        assert "of 112 tensors" not in summary  # one shard's tensors, not the folder's
        assert {t.base.shard for t in app.report.tensors if t.base} == {shard}
        for key in ("c", "w"):
            await pilot.press(key)
            await pilot.pause()
            assert not isinstance(app.screen, (MessageDialog, WriteDialog)) and app.job is None
            assert "needs checkpoint folders" in [n.message for n in app._notifications][-1]

    run_app(flow, base=BASE / shard, candidate=CANDIDATE / shard)


def test_yank_copies_the_full_sha256_or_the_name():
    name = "model.layers.0.self_attn.q_proj.weight"

    async def flow(app, pilot):
        await pilot.press("2")
        await type_into(pilot, "#filter-text", name)
        await pilot.press("enter")  # back to the table
        assert app.focused.id == "tensor-table"
        tensor = next(t for t in app.report.tensors if t.name == name)
        await pilot.press("y")
        assert app.clipboard == tensor.other.sha256 and len(app.clipboard) == 64
        await pilot.press("Y")
        assert app.clipboard == name

    run_app(flow)


@pytest.mark.slow
def test_slash_searches_the_table_of_every_tab_that_has_one():
    """/ on the Overview and Plan maps and the Prune table: digits find that layer (not 112),
    words a cell holding them; enter keeps the row, escape goes back, `/` enter finds the
    next match; the Tensors tab's / is its filter; the Canary tab has no table and says so."""
    from surgeon.tui.search import SearchBar

    async def flow(app, pilot):
        bar = app.query_one(SearchBar)
        layer_map = app.query_one("#layer-map")
        await pilot.press("slash", "5")
        assert app.focused is bar and layer_map.cursor_row == 5
        await pilot.press("enter")
        assert app.focused is layer_map and layer_map.cursor_row == 5 and not bar.display
        await pilot.press("slash", "3", "escape")  # looked at layer 3, went back
        assert layer_map.cursor_row == 5 and app.focused is layer_map
        await pilot.press("3", "l", *"4-7", "enter", "escape", "home")  # Plan: 4-7 rolled back
        plan_map = app.query_one("#plan-map")
        await pilot.press("slash", *"base", "enter")
        assert plan_map.cursor_row == 4
        await pilot.press("slash", "enter")  # the next match of "base"
        assert plan_map.cursor_row == 5
        await pilot.press("slash", *"BASE", "down")  # down: the next match while typing
        assert plan_map.cursor_row == 7
        await pilot.press("up", "enter")
        assert plan_map.cursor_row == 6
        await pilot.press("slash", *"nowhere")
        assert bar.has_class("no-match") and plan_map.cursor_row == 6
        await pilot.press("enter")
        assert plan_map.cursor_row == 6 and app.focused is plan_map
        await pilot.press("2", "slash")
        assert app.focused is app.query_one("#filter-text")
        await pilot.press("escape", "4", "slash")
        assert not bar.display
        assert [n.message for n in app._notifications][-1] == "This tab has no table to search"
        await pilot.press("5", "slash")
        assert app.focused is bar  # the prune table, empty until a prune runs
        await pilot.press("escape")

    run_app(flow)


def test_find_row_matches_a_layer_number_exactly_and_words_anywhere():
    from rich.text import Text
    from surgeon.tui.search import row_matches

    assert row_matches([Text("12"), "candidate"], "12")
    assert not row_matches([Text("112"), "candidate"], "12")
    assert not row_matches(["3", Text("#1 #12")], "12")  # digits are the layer
    assert row_matches(["3", Text("#1 #12")], "#12")  # a zeroed head
    assert row_matches(["3", Text("Candidate")], "cand")
    assert not row_matches(["3", Text("candidate")], "base")


def test_a_borderline_canary_pass_is_said_in_the_status_line_and_the_write_dialog():
    """Issue 19: 5 of 25 prompts failed at the limit of 5 passes, one failure from a fail."""
    from dataclasses import asdict

    from surgeon.tui.app import _canary_note
    from surgeon.tui.views import status_text

    from surgeon.recover.canary.checks import CanaryOptions, CanaryReport, PromptResult
    from surgeon.recover.plan import PlanSummary

    def report(failed: int) -> CanaryReport:
        prompts = [
            PromptResult("p", "b", "t", 1.0, 1.0, 0.0, 0.0, 24, 24, failures=["drift 9 > 3"] if n < failed else [])
            for n in range(25)
        ]
        return CanaryReport(failed <= 5, prompts, asdict(CanaryOptions()), base_cache_hit=True)

    summary = PlanSummary([1], [], [], [], 0, [], [], False, [])
    line = status_text(summary, report(5), None, "c")
    assert "canary: passed, borderline (5/25 failed)" in line.plain
    assert any(span.style == "yellow" for span in line.spans)
    assert "canary: passed (4/25 failed)" in status_text(summary, report(4), None, "c").plain
    assert _canary_note(report(5)).plain == "The canary passed on this plan, borderline: one more failure fails it."
    assert _canary_note(report(4)).plain == "The canary passed on this plan."
    # the eval's figure names its text where the line has room; at 80 columns the tabs name it
    evaluated = {"kl_mean": 0.0123}
    wide = status_text(summary, report(4), evaluated, "c", None, "the bundled held-out text").plain
    assert "eval: KL 0.0123 on the bundled held-out text" in wide
    narrow = status_text(summary, report(4), evaluated, "c", 80, "the bundled held-out text").plain
    assert len(narrow) <= 80 and "KL 0.0123" in narrow


@pytest.mark.slow
@pytest.mark.usefixtures("shared_canary_cache")
def test_a_status_line_on_every_tab_names_the_plan_and_its_verdicts():
    from surgeon.tui.tabs import TABS

    async def flow(app, pilot):
        line = text_of(app, "#status-line")
        assert line.strip() == "plan: keep 0-7 · canary: not run (c) · eval: not run (e) · candidate: candidate"
        await pilot.press("c")
        await settle(app, pilot)
        report = app.canary_reports[app.plan_key()]
        total = len(report.prompts)
        assert f"canary: FAILED ({report.failed}/{total} failed)" in text_of(
            app, "#status-line"
        )  # the Canary tab's count
        await pilot.press("3", "l", *"4-7", "enter")
        assert "plan: keep 0-3 · canary: not run (c)" in text_of(app, "#status-line")
        for tab in TABS:
            await pilot.press("escape", tab.key)
            assert app.query_one("#status-line").region.height == 1  # shown under each tab

    run_app(flow)


@pytest.mark.slow
@pytest.mark.usefixtures("shared_canary_cache")
def test_auto_plan_says_which_run_and_layers_it_is_testing(monkeypatch):
    """The Canary tab's line while the search runs: before each run, its number, the layers
    it tests and at most how many runs may follow, then the runs so far."""
    from surgeon.tui.app import SurgeonApp

    seen: list[str] = []
    status: list[str] = []
    real = SurgeonApp._searching

    def record(app, text):
        real(app, text)
        seen.append(_render_plain(app.query_one("#canary-auto-steps")))
        status.append(_render_plain(app.query_one("#status-line")))

    monkeypatch.setattr(SurgeonApp, "_searching", record)

    async def flow(app, pilot):
        await pilot.press("a")
        await settle(app, pilot)
        assert len(seen) == len(app.auto_steps) == 11
        assert seen[0].strip() == "auto search running: run 1 tests keep 0-7 (at most 17 more runs after it)"
        assert seen[2].startswith("auto search running: run 3 tests keep 0-1 (at most 15 more runs after it)")
        assert "run 1 keep 0-7 fail, run 2 keep 0-3 fail" in seen[2]
        assert seen[10].startswith("auto search running: run 11 tests keep 1-7")
        assert "canary: not run" in status[0] and "canary: FAILED" in status[1]  # run 1 tested the plan in hand
        assert text_of(app, "#canary-auto-steps").startswith("last auto search (found keep 1-7)")

    run_app(flow)


def test_an_moe_pair_shows_each_layers_changed_experts_on_the_map(tmp_path):
    from fixtures.build_moe_pair import moe_pair

    moe_pair(tmp_path, "qwen-moe", {(2, 3): "up_proj", (2, 11): "down_proj", (0, 0): "gate_proj"}, experts=12)

    async def flow(app, pilot):
        rows = table_rows(app.query_one("#layer-map"))
        header = [str(column.label) for column in app.query_one("#layer-map").columns.values()]
        assert header[-1] == "experts"
        assert [r[-1] for r in rows] == ["#0 of 12", "none of 12", "#3, #11 of 12", "none of 12"]
        assert rows[2][6] == "●"  # the mlp column
        await pilot.press("3")
        plan_header = [str(column.label) for column in app.query_one("#plan-map").columns.values()]
        assert "experts" not in plan_header  # beside the KL column it did not fit 80 columns
        await pilot.press("1", "end")
        assert app.query_one("#layer-map").cursor_row == 3  # end: the last layer
        await pilot.press("g")
        assert app.query_one("#layer-map").cursor_row == 0

    run_app(flow, base=tmp_path / "base", candidate=tmp_path / "other")


def test_a_dense_pair_has_no_experts_column():
    async def flow(app, pilot):
        header = [str(column.label) for column in app.query_one("#layer-map").columns.values()]
        assert "experts" not in header

    run_app(flow)


def test_a_gemma4_moe_pair_shows_the_changed_slices_of_its_fused_experts(tmp_path):
    """Gemma 4's experts are two fused tensors per layer: the map names the experts whose
    slices the diff found changed."""
    from fixtures.build_moe_pair import EXPERTS, gemma4_moe_pair

    gemma4_moe_pair(tmp_path, {(2, 3): "gate_up_proj", (2, 11): "down_proj", (1, 0): "down_proj"})

    async def flow(app, pilot):
        rows = table_rows(app.query_one("#layer-map"))
        expected = ["none", "#0", "#3, #11", "none"]
        assert [r[-1] for r in rows] == [f"{e} of {EXPERTS}" for e in expected]

    run_app(flow, base=tmp_path / "base", candidate=tmp_path / "other")


def test_a_search_that_finds_nothing_says_so():
    from surgeon.tui.search import SearchBar

    async def flow(app, pilot):
        await pilot.press("slash", *"zzz")
        assert app.query_one(SearchBar).has_class("no-match")
        await pilot.press("enter")
        assert [n.message for n in app._notifications][-1] == "No row matches 'zzz'"
        assert app.query_one("#layer-map").cursor_row == 0

    run_app(flow)


def test_a_new_filter_or_sort_starts_at_its_first_row():
    async def flow(app, pilot):
        await pilot.press("2", "end")
        table = app.query_one("#tensor-table")
        assert table.cursor_row > 0
        await type_into(pilot, "#filter-text", "q_proj")
        assert table.cursor_row == 0 and "row 1 " in text_of(app, "#tensor-count")
        await pilot.press("escape", "end", "s")
        assert table.cursor_row == 0

    run_app(flow)
