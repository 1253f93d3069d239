"""The TUI's session without the TUI: PairSession on the demo pair, with no Pilot and no
widgets. The plan's edits, undo and redo, the results kept per plan, what the status line
summarises and a new candidate's fresh start are the session's; the app only draws them.

The canary and eval tests load the demo model (torch); the rest needs neither torch nor
textual, as the session itself does not.
"""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
from surgeon.tui.session import PairSession
from surgeon.tui.views import status_text

from surgeon.demo import DEMO_CANDIDATE, DEMO_MODEL, DEMO_PROMPTS, DEMO_TEXT
from surgeon.errors import SurgeonError
from surgeon.progress import NoProgress
from surgeon.recover.salvage import PlanSearch, QualityBudget, SearchStep
from tests.helpers import make_variant, read_tensor

ALL = frozenset(range(8))  # the demo candidate changes every one of the 8 layers
EVAL_TOKENS = 256  # a few seconds for the 9 plans of the demo pair, as in test_tui


def loaded_session(base=DEMO_MODEL, candidate=DEMO_CANDIDATE) -> PairSession:
    session = PairSession(base, candidate, eval_tokens=EVAL_TOKENS)
    session.loaded(session.compare(NoProgress(), threading.Event()))
    return session


def test_the_session_imports_neither_textual_nor_torch():
    code = (
        "import sys, surgeon.tui.session\n"
        "loaded = [m for m in ('textual', 'torch', 'transformers') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_demo_base_brings_its_own_prompts_and_text():
    session = PairSession(DEMO_MODEL, DEMO_CANDIDATE)
    assert (session.prompts_path, session.eval_text) == (DEMO_PROMPTS, DEMO_TEXT)
    assert (session.prompts_name, session.eval_text_name) == ("the demo's prompts.txt", "the demo's training.txt")
    other = PairSession(DEMO_CANDIDATE, DEMO_MODEL)  # any other base: the bundled general ones
    assert (other.prompts_path, other.eval_text) == (None, None)
    assert (other.prompts_name, other.eval_text_name) == ("the bundled set", "the bundled held-out text")


def test_no_plan_before_the_diff():
    session = PairSession(DEMO_MODEL, DEMO_CANDIDATE)
    for edit in (session.plan_key, session.undo, session.status, lambda: session.toggle(0)):
        with pytest.raises(SurgeonError, match="still hashing"):
            edit()


def test_plan_edits_undo_and_redo():
    session = loaded_session()
    assert session.plan_key() == ALL and not session.undo()  # a new plan keeps every changed layer
    session.toggle(3)
    session.edit_range("roll_back", "0-1")
    assert session.plan_key() == ALL - {0, 1, 3}
    session.edit_range("keep_only", "5")
    assert session.plan_key() == {5}
    with pytest.raises(SurgeonError):
        session.edit_range("restore", "9")  # the demo has layers 0-7
    assert session.plan_key() == {5}  # a refused edit changes nothing, and is no undo step
    assert session.undo() and session.plan_key() == ALL - {0, 1, 3}
    assert session.undo() and session.undo() and session.plan_key() == ALL
    assert not session.undo()
    assert session.redo() and session.plan_key() == ALL - {3}
    session.toggle_non_layer()  # a new edit drops what redo had left
    assert not session.redo() and session.status().summary.keep_non_layer
    assert session.undo() and not session.status().summary.keep_non_layer


def test_a_search_becomes_the_plan_and_its_steps_are_recorded_only_for_that_plan():
    session = loaded_session()
    steps = [SearchStep([0, 1, 2], False, "prefix"), SearchStep([1, 2], True, "add")]
    session.adopt(PlanSearch([1, 2], steps))
    assert session.plan_key() == {1, 2} and session.auto_steps == steps and session.auto_budget is None
    canary, recorded, quality = session.write_record()
    assert recorded == steps and canary is None and quality is None  # neither canary nor eval ran here
    session.toggle(4)  # another plan: the search did not find it
    assert session.write_record()[1] is None
    assert session.undo() and session.write_record()[1] == steps
    assert session.undo() and session.plan_key() == ALL  # the search was one undo step


def test_the_status_without_results():
    session = loaded_session()
    status = session.status()
    assert status.canary is None and status.eval is None and status.summary.keep == sorted(ALL)
    line = status_text(status.summary, status.canary, status.eval, session.candidate.name).plain
    assert line == "plan: keep 0-7 · canary: not run (c) · eval: not run (e) · candidate: candidate"


def test_a_new_candidate_starts_afresh(tmp_path):
    session = loaded_session()
    session.adopt(PlanSearch([2], [SearchStep([2], True, "add")]), QualityBudget(max_kl=0.1))
    session.last_output = tmp_path / "out"
    name = "model.layers.6.self_attn.o_proj.weight"
    other = make_variant(tmp_path / "other", DEMO_MODEL, replace={name: read_tensor(DEMO_MODEL, name) * 0})
    session.open_candidate(other)
    assert session.candidate == other and session.report is None and session.plan is None
    assert (session.auto_steps, session.auto_found, session.auto_budget) == ([], None, None)
    assert (session.composed, session.eval_session, session.eval_reports, session.layer_kl) == (None, None, {}, None)
    assert session.last_output == tmp_path / "out" and session.prompts_path == DEMO_PROMPTS  # the base's stay
    session.loaded(session.compare(NoProgress(), threading.Event()))
    assert session.plan_key() == {6} and not session.undo()  # its own plan, with no history


# --- with the model: canary and eval results per plan ---------------------------------


@pytest.fixture(scope="module")
def measured() -> PairSession:
    """The demo pair with the canary run on two plans (every layer; layer 0 alone) and the
    eval of every layer kept (which scores each changed layer alone too)."""
    pytest.importorskip("torch")
    session = loaded_session()
    progress, cancel = NoProgress(), threading.Event()
    for plan in (ALL, frozenset({0})):
        session.run_canary(plan, progress, cancel)
    session.store_eval(session.evaluate(ALL, progress, cancel))
    return session


def test_canary_results_are_kept_per_plan(measured):
    session = measured
    assert set(session.canary_reports) == {ALL, frozenset({0})} and session.composed.runs == 2
    assert not session.canary_reports[ALL].passed  # the demo's all-layers prune fails its canary
    session.run_canary(ALL, NoProgress(), threading.Event())
    assert session.composed.runs == 2  # a plan already run is answered from memory


def test_eval_results_are_kept_per_plan(measured):
    session = measured
    assert set(session.eval_reports) == {ALL} | {frozenset({n}) for n in ALL}
    assert sorted(session.layer_kl) == sorted(ALL) and session.eval_known(ALL)
    assert session.layer_kl[3] == session.eval_reports[frozenset({3})]["kl_mean"]
    assert 0 < session.eval_reports[ALL]["tokens"] < EVAL_TOKENS  # the session's token budget reached the engine
    record = session.eval_record  # the text the numbers hold for, as the manifest names it
    assert record["source"] == DEMO_TEXT.name and len(record["file_sha256"]) == 64 and record["tokens"] > 0


def test_the_status_follows_the_plan_in_hand(measured):
    session = measured
    status = session.status()
    assert status.canary is session.canary_reports[ALL] and status.eval == session.eval_reports[ALL]
    line = status_text(status.summary, status.canary, status.eval, "candidate").plain
    kl = session.eval_reports[ALL]["kl_mean"]
    failed = f"{status.canary.failed}/{len(status.canary.prompts)} failed"
    assert line == f"plan: keep 0-7 · canary: FAILED ({failed}) · eval: KL {kl:.4f} · candidate: candidate"

    session.edit_range("keep_only", "0")  # scored alone, and its canary was run
    status = session.status()
    assert (
        status.canary is session.canary_reports[frozenset({0})] and status.eval == session.eval_reports[frozenset({0})]
    )
    session.toggle(1)  # neither has been run on keep 0-1
    status = session.status()
    assert status.summary.keep == [0, 1] and status.canary is None and status.eval is None
    assert session.undo() and session.undo() and session.status().canary is session.canary_reports[ALL]


def test_the_write_records_the_canary_and_eval_of_the_plan_written(measured, tmp_path):
    session = measured
    assert session.plan_key() == ALL
    request = session.write_request(tmp_path / "salvaged", False)
    assert request.keep == sorted(ALL) and session.last_output == tmp_path / "salvaged"
    assert request.canary_before == session.canary_reports[ALL].to_json()
    assert request.auto_steps is None  # no search found this plan
    assert request.quality["eval"] == session.eval_reports[ALL] and request.quality["budget"] is None
    assert request.quality["layer_kl"] == {str(n): session.layer_kl[n] for n in sorted(ALL)}
    assert request.quality["text"] == session.eval_record
    session.toggle(2)
    canary, _, quality = session.write_record()
    assert canary is None and quality is None  # keep 0-1,3-7 was neither run nor scored
    session.undo()
