"""The TUI as a new user met it (issue 18): the demo's own prompts and text, a light install
without torch, a cancel that says when it has taken effect, names that fit 80 columns, and
a write dialog that applies the writer's own output rules.

Driven through Pilot on the bundled demo pair, with the helpers of test_tui.py.
"""

from __future__ import annotations

import asyncio
import shutil
import sys

from surgeon.tui.dialogs import MessageDialog, WriteDialog

from surgeon.demo import DEMO_PROMPTS, DEMO_TEXT
from surgeon.recover.canary.checks import read_prompts
from tests.tui.test_tui import BASE, CANDIDATE, hold, run_app, settle, text_of, type_into


def notices(app) -> list[str]:
    return [str(n.message) for n in app._notifications]


def shown_lines(widget) -> list[str]:
    """What `widget` draws now, line by line, as the screen would get it."""
    return [widget.render_line(y).text for y in range(widget.size.height)]


# --- 1. the demo's prompts and text --------------------------------------------------


def test_the_demo_model_brings_its_own_prompts_and_text_and_the_canary_tab_names_them():
    """On the demo pair the canary asks the demo's prompts and the eval scores its training
    text, as `surgeon demo` does: the general prompts made the base answer noise."""

    async def flow(app, pilot):
        assert app.prompts_path == DEMO_PROMPTS and app.eval_text == DEMO_TEXT
        await pilot.press("4")
        count = len(read_prompts(DEMO_PROMPTS))
        assert text_of(app, "#canary-inputs").strip() == (
            f"prompts: the demo's prompts.txt ({count}) · eval text: the demo's training.txt"
        )
        await pilot.press("c")
        await settle(app, pilot)
        report = app.canary_reports[app.plan_key()]
        assert [p.prompt for p in report.prompts] == [p.label for p in read_prompts(DEMO_PROMPTS)]
        # The base answers its own prompts with its training text, not noise.
        assert "Paris" in next(p.base_text for p in report.prompts if "France" in p.prompt)
        assert not report.passed  # the all-layers prune still fails, as in `surgeon demo`

    run_app(flow)


def test_given_prompts_and_text_win_and_another_base_gets_the_bundled_sets(tmp_path):
    from surgeon.tui.app import SurgeonApp

    prompts, text = tmp_path / "mine.txt", tmp_path / "eval.txt"
    prompts.write_text("The cat sat on the\nWater boils at\n")
    text.write_text("The cat sat on the mat.\n")
    app = SurgeonApp(BASE, CANDIDATE, prompts=prompts, eval_text=text)
    assert app.inputs.plain == "prompts: mine.txt (2) · eval text: eval.txt"
    other = tmp_path / "other-base"
    shutil.copytree(BASE, other)  # the same weights elsewhere: not the bundled demo model
    app = SurgeonApp(other, CANDIDATE)
    assert app.prompts_path is None and app.eval_text is None
    assert app.inputs.plain == (
        f"prompts: the bundled set ({len(read_prompts(None))}) · eval text: the bundled held-out text"
    )


def test_tui_command_takes_prompts_and_refuses_a_bad_file_in_one_line(tmp_path):
    from click.testing import CliRunner

    from surgeon.cli.main import main

    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    result = CliRunner().invoke(main, ["tui", "--prompts", str(empty)])
    assert result.exit_code == 2 and result.output.strip() == f"surgeon: error: {empty}: no prompts"
    assert "--prompts" in CliRunner().invoke(main, ["tui", "-h"]).output


# --- 2. a light install ---------------------------------------------------------------


def test_a_light_install_says_what_to_install_in_the_clis_words(monkeypatch):
    """torch and transformers cannot be imported (the `[tui]` extra alone): each key that runs
    a model shows the CLI's one line, never a ModuleNotFoundError, and starts nothing."""
    from surgeon.errors import missing_extra

    expected = str(missing_extra(ModuleNotFoundError(name="torch"), "the canary"))
    assert expected.startswith("the canary needs torch, which is not installed: pip install")

    async def flow(app, pilot):
        for module in ("torch", "transformers"):
            monkeypatch.setitem(sys.modules, module, None)  # as if not installed
        for key, what in (("c", "canary"), ("a", "auto plan"), ("e", "eval"), ("5", None), ("p", "prune")):
            await pilot.press(key)
            await pilot.pause()
            if what is None:
                continue
            assert isinstance(app.screen, MessageDialog), key
            assert text_of(app, "#dialog-title").strip() == f"{what} could not run"
            message = text_of(app, "#dialog-text").strip()
            assert message.startswith(f"the {what} needs torch, which is not installed: pip install")
            assert "ModuleNotFoundError" not in message and "Traceback" not in message
            assert app.job is None
            await pilot.press("escape")

    run_app(flow)


def test_an_import_error_inside_a_job_is_the_clis_line_too():
    """A job that meets a missing extra anyway (the check looks, it does not import) says
    the same line."""
    from surgeon.tui.jobs import Job

    async def flow(app, pilot):
        app._job_failed(Job("canary", done=print), ModuleNotFoundError("No module named 'torch'", name="torch"))
        await pilot.pause()
        assert isinstance(app.screen, MessageDialog)
        assert "the canary needs torch, which is not installed" in text_of(app, "#dialog-text")
        assert "ModuleNotFoundError" not in text_of(app, "#dialog-text")

    run_app(flow)


# --- 3. cancel ------------------------------------------------------------------------


def test_a_cancel_during_the_load_says_cancelling_then_cancelled_and_a_key_meanwhile_is_answered(monkeypatch):
    """x while the canary loads its model: the bar says "cancelling…" at once; c pressed
    meanwhile is refused in words; when the worker has really stopped a notice says so
    (and that c can be pressed now). The load stops at its next step, before the base
    generates a single prompt."""
    from surgeon.recover.canary import runner as canary_run

    entered, release = hold(monkeypatch, canary_run, "CanaryModel")

    async def flow(app, pilot):
        await pilot.press("c")
        await asyncio.to_thread(entered.wait, 60)
        await pilot.press("x")
        assert text_of(app, "#job-label").strip() == "canary: cancelling…"
        assert "stops at its next step" in text_of(app, "#job-hint")
        assert notices(app)[-1].startswith("Cancelling the canary: it stops at its next step")
        await pilot.press("c")
        assert notices(app)[-1] == "canary not started: the canary is still stopping; press c again when it has"
        await pilot.press("x")
        assert notices(app)[-1].startswith("The canary is already stopping")
        release.set()
        await settle(app, pilot)
        assert notices(app)[-1] == "canary cancelled; press c now"
        assert app.composed is None and app.canary_reports == {}
        assert not app.query_one("#job-bar").has_class("running")
        monkeypatch.undo()
        await pilot.press("c")
        await settle(app, pilot)
        assert len(app.canary_reports) == 1

    run_app(flow)


# --- 4. folding at 80 columns ---------------------------------------------------------


def test_the_status_line_keeps_the_candidates_name_whole_at_80_columns(tmp_path):
    """The status line gives up its hints, labels and eval before the name: it ended
    "candidate: candida…" on the demo pair, and cut a pruned candidate's name too."""
    long_name = tmp_path / "model-pruned-0.125-layers-all"
    shutil.copytree(CANDIDATE, long_name)

    async def flow(app, pilot):
        line = text_of(app, "#status-line").strip()
        assert line == "plan: keep 0-7 · canary: not run · eval: not run · candidate: candidate"
        app.open_candidate(long_name)
        await settle(app, pilot)
        line = text_of(app, "#status-line").strip()
        assert line == "keep 0-7 · canary: not run · candidate: model-pruned-0.125-layers-all"
        await pilot.press("c")
        await settle(app, pilot)
        shown = shown_lines(app.query_one("#status-line"))[0]
        assert shown.strip() == "keep 0-7 · canary: FAILED · candidate: model-pruned-0.125-layers-all"
        await pilot.resize_terminal(160, 48)
        await pilot.pause()
        full = shown_lines(app.query_one("#status-line"))[0].strip()
        assert full.startswith("plan: keep 0-7 · canary: FAILED (") and full.endswith(
            "failed) · eval: not run (e) · candidate: model-pruned-0.125-layers-all"
        )

    run_app(flow, size=(80, 24))


def test_a_shard_verdict_is_drawn_whole_after_a_candidate_swap(tmp_path):
    """The shard table's columns are sized from the new rows before any frame: DataTable
    sized them when next idle, and a frame drawn before that kept "identical" cut to the
    width "changed" had given the column ("identic")."""
    import numpy as np
    from surgeon.tui.panes import OverviewPane
    from surgeon.tui.views import layer_rows

    from surgeon.diff.engine import DiffOptions, diff_checkpoints
    from surgeon.format.checkpoint import open_checkpoint
    from surgeon.format.hashcache import hash_cache_dir
    from surgeon.recover.plan import RollbackPlan
    from tests.helpers import make_variant

    name = "model.layers.0.self_attn.q_proj.weight"
    shape = open_checkpoint(BASE).tensors[name].shape
    swapped = make_variant(tmp_path / "one-layer", src=BASE, replace={name: np.zeros(shape, np.float32)})
    report = diff_checkpoints(open_checkpoint(BASE), open_checkpoint(swapped), DiffOptions(cache_dir=hash_cache_dir()))
    assert [s.status for s in report.shards] == ["changed", "identical"]

    async def flow(app, pilot):
        shards = app.query_one("#shards")
        assert all("changed" in line for line in shown_lines(shards)[1:3])  # the demo pair: both changed
        app.query_one(OverviewPane).show(report, layer_rows(report, RollbackPlan(report)))
        drawn = shown_lines(shards)  # a frame drawn at once, before the table is next idle
        assert " identical " in drawn[2], drawn
        await pilot.pause()
        assert " identical " in shown_lines(shards)[2]

    run_app(flow, size=(80, 24))


# --- 5. the write dialog --------------------------------------------------------------


def test_the_write_dialog_sees_a_dangling_link_as_taken(tmp_path):
    """A link to nothing is there (os.path.lexists, the writer's own rule): the dialog says
    so at once and stays open, where it used to start the salvage, which then refused."""
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "nowhere")

    async def flow(app, pilot):
        await pilot.press("w")
        await type_into(pilot, "#write-output", str(link))
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, WriteDialog) and app.job is None
        # --force never replaces a link (surgeon.format.replacing), so ticking Replace cannot
        # help: the engine's refusal is said at once, as the CLI says it
        refusal = "not replacing it: it is a link, not a folder; choose another output folder"
        assert notices(app)[-1].endswith(refusal)
        app.screen.query_one("#write-replace").value = True
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, WriteDialog) and app.job is None  # no question, no write
        assert notices(app)[-1].endswith(refusal)

    run_app(flow)
    assert link.is_symlink() and not (tmp_path / "nowhere").exists()
