"""The calibrated canary: relative checks, the base's self-check, the prompt set, the verdict
by fraction of prompts (issue 10)."""

import json
from dataclasses import asdict

import pytest
from click.testing import CliRunner

from surgeon.cli.main import main
from surgeon.demo import DEMO_CANDIDATE, DEMO_MODEL, DEMO_PROMPTS
from surgeon.errors import SurgeonError
from surgeon.recover.canary.checks import (
    CanaryOptions,
    CanaryReport,
    Prompt,
    PromptResult,
    judge,
    read_prompts,
    tally,
    usable_prompts,
    verdict,
)
from surgeon.recover.canary.runner import run_canary
from surgeon.recover.render import borderline_warning, canary_verdict

TRAINED = DEMO_MODEL


def result(**values) -> PromptResult:
    fields = dict(prompt="p", base_text="b", text="t", drift=1.0, self_ratio=1.0, repetition=0.0, nonprintable=0.0)
    fields |= dict(tokens=24, agreement=24, base_repetition=0.0, base_nonprintable=0.0, base_tokens=24)
    out = PromptResult(**(fields | values))
    judge(out, CanaryOptions())
    return out


def test_repetition_is_judged_against_the_base_on_the_same_prompt():
    # SmolLM2-135M repeats itself 0.61 on "The sun rises in the" against itself: an absolute
    # 0.5 failed the base; against the base's own 0.61 plus the margin it passes.
    assert result(repetition=0.61, base_repetition=0.61).passed
    assert result(repetition=0.80, base_repetition=0.61).passed  # within the 0.25 margin
    looping = result(repetition=0.90, base_repetition=0.61)
    assert not looping.passed and "repetition 0.90 > base 0.61 + 0.25" in looping.failures[0]
    assert not result(repetition=0.3, base_repetition=0.0).passed


def test_an_early_end_fails_only_where_the_base_went_on():
    assert result(tokens=2, base_tokens=2).passed  # the base itself stops there
    stopped = result(tokens=2, base_tokens=20)
    assert not stopped.passed and "where the base went on to 20" in stopped.failures[0]
    assert result(tokens=7, base_tokens=20).passed  # past min_tokens: a shorter answer is not a failure


def test_nonprintable_is_relative_and_agreement_is_reported_not_judged_by_default():
    assert result(nonprintable=0.2, base_nonprintable=0.2).passed
    assert not result(nonprintable=0.3, base_nonprintable=0.2).passed
    assert result(agreement=0).passed
    strict = result(agreement=0)
    judge(strict, CanaryOptions(min_agreement=1))
    assert strict.failures == ["agreement 0 < 1"]


def test_the_verdict_is_a_fraction_of_prompts():
    good, bad = result(), result(drift=9.0)
    options = CanaryOptions(max_fail_frac=0.25)
    assert verdict([good] * 3 + [bad], options)  # 1 of 4 = 25%: at the limit, passes
    assert not verdict([good] * 2 + [bad], options)  # 1 of 3 = 33%
    assert not verdict([], options)  # no evidence is no pass
    assert verdict([good] * 3 + [bad], CanaryOptions(max_fail_frac=0.0)) is False


@pytest.mark.parametrize(
    ("failed", "total", "limit", "passed", "max_failed", "margin", "borderline"),
    [
        (0, 25, 0.2, True, 5, 6, False),  # six more failures fail it
        (4, 25, 0.2, True, 5, 2, False),
        (5, 25, 0.2, True, 5, 1, True),  # at the limit: one more fails it
        (6, 25, 0.2, False, 5, 1, False),  # one fewer would pass it
        (25, 25, 0.2, False, 5, 20, False),
        (7, 8, 0.2, False, 1, 6, False),  # the demo candidate on the demo prompts
        (1, 8, 0.2, True, 1, 1, True),
        (0, 3, 0.0, True, 0, 1, False),  # no failure is never borderline: nothing better to measure
        (29, 100, 0.29, True, 29, 1, True),  # 0.29 x 100 is 28.999999999999996 in floats
        (0, 0, 0.2, False, 0, 0, False),  # no prompts: no pass, and no other verdict
    ],
)
def test_the_verdict_its_margin_and_a_borderline_pass(failed, total, limit, passed, max_failed, margin, borderline):
    counts = tally(failed, total, limit)
    assert (counts.passed, counts.max_failed, counts.margin, counts.borderline) == (
        passed,
        max_failed,
        margin,
        borderline,
    )
    good, bad = result(), result(drift=9.0)
    assert verdict([bad] * failed + [good] * (total - failed), CanaryOptions(max_fail_frac=limit)) is passed


def report_of(failed: int, total: int, limit: float = 0.2) -> CanaryReport:
    prompts = [result(drift=9.0)] * failed + [result()] * (total - failed)
    options = CanaryOptions(max_fail_frac=limit)
    return CanaryReport(verdict(prompts, options), prompts, asdict(options), base_cache_hit=True)


def test_the_verdict_line_says_how_near_the_other_verdict_is():
    assert canary_verdict(report_of(5, 25)).plain == (
        "canary passed, borderline: 5/25 prompts failed (20%), the limit is 5 (20%); one more failure fails it; drift 5"
    )
    assert canary_verdict(report_of(2, 25)).plain == (
        "canary passed: 2/25 prompts failed (8%), the limit is 5 (20%); 4 more failures fail it; drift 2"
    )
    assert canary_verdict(report_of(6, 25)).plain == (
        "canary FAILED: 6/25 prompts failed (24%), the limit is 5 (20%); one fewer failure would pass it; drift 6"
    )
    assert canary_verdict(report_of(3, 8, 0.125)).plain.startswith(
        "canary FAILED: 3/8 prompts failed (38%), the limit is 1 (12.5%); 2 fewer failures would pass it"
    )
    assert borderline_warning(report_of(5, 25).tally) == (
        "the canary passed at its limit (5/25 prompts failed, the limit is 5): one more failing prompt fails it, "
        "so the pass is borderline"
    )
    assert borderline_warning(report_of(4, 25).tally) is None and borderline_warning(report_of(6, 25).tally) is None
    data = report_of(5, 25).to_json()
    assert (data["max_failed_prompts"], data["margin"], data["borderline"]) == (5, 1, True)


@pytest.mark.parametrize(
    "options",
    [
        CanaryOptions(max_fail_frac=1.0),
        CanaryOptions(max_drift=0.9),
        CanaryOptions(repetition_margin=-0.1),
        CanaryOptions(max_drift=float("nan")),
        CanaryOptions(repetition_margin=float("nan")),
        CanaryOptions(min_agreement=30),
    ],
)
def test_options_that_cannot_judge_are_one_line(options):
    with pytest.raises(SurgeonError):
        options.validate()


def test_bundled_prompts_cover_the_kinds_the_issue_names():
    prompts = read_prompts(None)
    plain = [p for p in prompts if p.messages is None]
    assert len(plain) >= 24
    kinds = {p.kind for p in prompts}
    assert {"fact", "instruction", "code", "list", "chat"} <= kinds
    chats = [p for p in prompts if p.messages is not None]
    assert chats and all(p.needs_template for p in chats)
    assert any(len(p.messages) >= 3 for p in chats)  # multi-turn


def test_chat_prompts_are_used_only_with_a_chat_template(tmp_path):
    from surgeon.runtime.tokenizer import load_tokenizer

    tok = load_tokenizer(TRAINED)
    prompts = read_prompts(None)
    assert not tok.chat_template
    assert all(p.messages is None for p in usable_prompts(prompts, tok))
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    assert usable_prompts(prompts, tok) == prompts
    # a user's own chat prompt is never dropped silently: it reaches prompt_ids, which refuses it
    mine = tmp_path / "mine.jsonl"
    mine.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"}]}) + "\n")
    assert not read_prompts(mine)[0].needs_template


def test_prompts_file_replaces_and_add_prompts_extends(tmp_path):
    mine = tmp_path / "mine.txt"
    mine.write_text("First prompt\nSecond prompt\n")
    bundled = read_prompts(None)
    assert [p.text for p in read_prompts(mine)] == ["First prompt", "Second prompt"]
    extended = read_prompts(None, add=mine)
    assert extended[: len(bundled)] == bundled and [p.text for p in extended[len(bundled) :]] == [
        "First prompt",
        "Second prompt",
    ]
    kinds = tmp_path / "kinds.jsonl"
    kinds.write_text(json.dumps({"prompt": "x", "kind": 3}) + "\n")
    with pytest.raises(SurgeonError, match='"kind" must be text'):
        read_prompts(kinds)


PROMPTS = [Prompt(text=t) for t in ("The capital of France is", "Water boils at", "To make tea, boil the water,")]


def test_base_against_itself_passes_and_the_self_check_is_cached(tmp_path):
    first = run_canary(TRAINED, TRAINED, PROMPTS, cache_dir=tmp_path)
    assert first.passed and first.failed == 0
    assert first.self_check == {"passed": True, "failed": 0, "prompts": 3, "first_failure": "", "cached": False}
    again = run_canary(TRAINED, TRAINED, PROMPTS, cache_dir=tmp_path)
    assert again.self_check["cached"] and again.base_cache_hit
    assert first.to_json()["base_self_check"]["passed"] is True


def test_a_base_that_does_not_regenerate_its_recorded_outputs_gets_no_verdict(tmp_path):
    # A cached base output that the base does not generate (a tampered entry, or a device
    # where generation is not deterministic) fails the base against itself: no verdict.
    cache = tmp_path / "cache"
    assert run_canary(TRAINED, TRAINED, PROMPTS, cache_dir=cache).passed
    entries = [f for f in cache.iterdir() if "tokens" in json.loads(f.read_text())]
    assert len(entries) == len(PROMPTS)
    entry = json.loads(entries[0].read_text())
    entries[0].write_text(json.dumps({"tokens": [5, 6, 7, 8, 9, 10, 11], "nll": entry["nll"]}))
    with pytest.raises(SurgeonError, match="the base fails the canary against itself"):
        run_canary(TRAINED, TRAINED, PROMPTS, cache_dir=cache)


def test_a_cache_others_can_write_is_not_read(tmp_path):
    cache = tmp_path / "cache"
    run_canary(TRAINED, TRAINED, PROMPTS, cache_dir=cache)
    assert run_canary(TRAINED, TRAINED, PROMPTS, cache_dir=cache).base_cache_hit
    cache.chmod(0o777)  # anyone could have chosen these outputs
    shared = run_canary(TRAINED, TRAINED, PROMPTS, cache_dir=cache)
    assert not shared.base_cache_hit and not shared.self_check["cached"]


def test_the_agreement_check_stops_where_the_base_stopped():
    stopped = result(agreement=3, base_tokens=3, tokens=3)
    judge(stopped, CanaryOptions(min_agreement=5))
    assert stopped.passed  # it agreed on every token the base generated
    early = result(agreement=2, base_tokens=3, tokens=3)
    judge(early, CanaryOptions(min_agreement=5))
    assert early.failures == ["agreement 2 < 3"]


@pytest.mark.parametrize("args", [["--min-agreement", "7", "--max-new-tokens", "6"], ["--max-drift", "nan"]])
def test_limits_that_cannot_judge_are_refused_before_any_work(args):
    result = CliRunner().invoke(main, ["canary", str(TRAINED), "--base", str(TRAINED), *args])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1


def test_a_prompt_with_no_tokens_is_one_line(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("<bos>\n")
    result = CliRunner().invoke(
        main, ["canary", str(TRAINED), "--base", str(TRAINED), "--prompts", str(prompts), "--bos", "none"]
    )
    assert result.exit_code == 2 and "no tokens to generate from" in result.stderr


def test_cli_reports_failed_prompts_and_checks(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(p.text for p in PROMPTS) + "\n")
    masked = tmp_path / "masked"
    from tests.helpers import make_variant, read_tensor

    o_proj = "model.layers.{}.self_attn.o_proj.weight"
    make_variant(
        masked, src=TRAINED, replace={o_proj.format(i): read_tensor(TRAINED, o_proj.format(i)) * 0 for i in range(8)}
    )
    result = CliRunner().invoke(main, ["canary", str(masked), "--base", str(TRAINED), "--prompts", str(prompts)])
    assert result.exit_code == 3
    assert "canary FAILED: 3/3 prompts failed (100%), the limit is 0 (20%); 3 fewer failures would pass it" in (
        result.stdout
    )
    assert "drift 3" in result.stdout  # which checks failed, how often
    data = json.loads(
        CliRunner()
        .invoke(main, ["canary", str(masked), "--base", str(TRAINED), "--prompts", str(prompts), "--json"])
        .stdout
    )
    assert data["schema"] == "surgeon.canary/2" and data["failed_prompts"] == 3 and data["prompts_total"] == 3
    assert all(p["failures"] for p in data["prompts"])


@pytest.mark.usefixtures("shared_canary_cache")
def test_cli_a_borderline_pass_exits_0_with_a_warning():
    """The demo candidate fails 7 of its 8 prompts: at --max-fail-frac 0.875 the limit is 7,
    and the pass is one failing prompt from a fail."""
    args = ["canary", str(DEMO_CANDIDATE), "--base", str(TRAINED), "--prompts", str(DEMO_PROMPTS)]
    args += ["--max-fail-frac", "0.875", "--device", "cpu"]
    shown = CliRunner().invoke(main, args)
    assert shown.exit_code == 0, shown.output
    line = "canary passed, borderline: 7/8 prompts failed (88%), the limit is 7 (87.5%); one more failure fails it"
    assert line in shown.stdout
    warning = "the canary passed at its limit (7/8 prompts failed, the limit is 7): one more failing prompt fails it"
    assert shown.stderr == f"surgeon: warning: {warning}, so the pass is borderline\n"
    as_json = CliRunner().invoke(main, [*args, "--json"])
    assert as_json.exit_code == 0 and as_json.stderr == shown.stderr
    data = json.loads(as_json.stdout)
    assert (data["passed"], data["max_failed_prompts"], data["margin"], data["borderline"]) == (True, 7, 1, True)


def test_a_cancel_during_the_composed_canarys_load_stops_at_the_next_step(tmp_path):
    """The TUI's x during "loading models": ComposedCanary looks at the event between its
    loading steps and the base's prompts. It used to go on until the base had generated and
    scored every prompt (the bar stayed over 7 s; minutes on a real model)."""
    import threading

    from surgeon.demo import DEMO_CANDIDATE
    from surgeon.errors import Cancelled
    from surgeon.recover.canary.runner import ComposedCanary

    cancel, steps = threading.Event(), []

    class PressesXWhileTheBaseLoads:  # a ProgressSink
        def start(self, description: str, total: int, unit: str = "bytes") -> None:
            steps.append(description)
            if description == "base: loading":
                cancel.set()

        def advance(self, amount: int) -> None: ...

        def stop(self) -> None: ...

    cache = tmp_path / "cache"  # empty: the base would generate each prompt
    with pytest.raises(Cancelled):
        ComposedCanary(
            TRAINED, DEMO_CANDIDATE, PROMPTS, cache_dir=cache, progress=PressesXWhileTheBaseLoads(), cancel=cancel
        )
    assert steps == ["base: loading"]  # no prompt generated or scored after it
    assert not cache.exists() or not any(cache.iterdir())
