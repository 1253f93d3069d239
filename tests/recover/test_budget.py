"""Salvage by a quality budget, and the quality record a manifest carries to the model card
(issue 10, sections 2 and 3)."""

import itertools
import json
import shutil

import pytest
from click.testing import CliRunner

from surgeon.cli.main import main
from surgeon.demo import DEMO_CANDIDATE, DEMO_MODEL, DEMO_TEXT
from surgeon.diff.engine import DiffOptions, diff_checkpoints
from surgeon.errors import SurgeonError
from surgeon.format.checkpoint import open_checkpoint
from surgeon.quality.budget import split_session
from surgeon.quality.evaluate import EvalOptions, EvalSession, document_windows, load_eval_text, make_windows
from surgeon.quality.record import recorded_quality
from surgeon.recover.salvage import QualityBudget, budget_search
from surgeon.runtime.settings import RunSettings
from surgeon.runtime.tokenizer import load_tokenizer

BASE = DEMO_MODEL
CANDIDATE = DEMO_CANDIDATE  # every layer pruned; layer 0 is the costly one
TEXT = DEMO_TEXT
EVAL = ["--eval-text", str(TEXT), "--eval-tokens", "512", "--device", "cpu"]


@pytest.fixture(scope="module")
def session():
    options = EvalOptions(text=str(TEXT), max_tokens=512, per_document=True, run=RunSettings(device="cpu"))
    return EvalSession(BASE, CANDIDATE, options)  # per document: the demo model learned one sentence at a time


def summaries(session):
    return lambda plans: [report.summary() for report in session.evaluate_plans(plans)]


def test_budget_keeps_the_cheap_layers_and_lands_within_it(session):
    plan = budget_search(sorted(session.changed_layers), summaries(session), QualityBudget(max_kl=0.05))
    assert plan.keep == [1, 2, 3, 4, 5, 6, 7]
    assert plan.quality["kl_mean"] <= 0.05
    assert max(plan.layer_kl, key=plan.layer_kl.get) == 0  # layer 0 costs the most alone
    hows = [step.how for step in plan.steps]
    assert hows[0] == "all" and not plan.steps[0].passed
    assert hows.count("alone") == 8
    # layer 0 is over budget alone, so it is never tried in a composed plan
    assert all(0 not in step.layers for step in plan.steps if step.how == "budget")
    # added cheapest first: each budget step keeps the layers before it
    adds = [step for step in plan.steps if step.how == "budget"]
    assert all(set(a.layers) < set(b.layers) for a, b in itertools.pairwise(adds))


def test_a_generous_budget_keeps_everything_in_one_evaluation(session):
    plan = budget_search(sorted(session.changed_layers), summaries(session), QualityBudget(max_ppl_ratio=100.0))
    assert plan.keep == list(range(8)) and [s.how for s in plan.steps] == ["all"]
    assert plan.layer_kl is None


def test_a_failing_canary_takes_back_the_costliest_kept_layer(session):
    seen = []

    def canary(layers):  # the canary's answer is an input of the search; this one rejects layer 1
        seen.append(layers)
        return 1 not in layers

    plan = budget_search(
        sorted(session.changed_layers), summaries(session), QualityBudget(max_kl=0.05), canary_passes=canary
    )
    assert plan.keep == [2, 3, 4, 5, 6, 7]
    canary_steps = [s for s in plan.steps if s.how == "canary"]
    # the whole rejected, then a bisection over the cheapest-first prefixes: 1 + log2(7) runs
    assert [s.passed for s in canary_steps] == [False, True, True, True]
    assert [len(s.layers) for s in canary_steps] == [7, 3, 5, 6]
    assert plan.quality["kl_mean"] <= 0.05  # the final plan's own numbers, measured


def test_a_budget_met_by_all_layers_but_failed_by_the_canary_ranks_them(session):
    plan = budget_search(
        sorted(session.changed_layers),
        summaries(session),
        QualityBudget(max_kl=10.0),
        canary_passes=lambda layers: 0 not in layers,
    )
    assert plan.keep == [1, 2, 3, 4, 5, 6, 7]  # layer 0, the costliest, goes back; not the last-numbered
    assert [s.how for s in plan.steps][:3] == ["all", "canary", "alone"]


@pytest.mark.parametrize("budget", [QualityBudget(), QualityBudget(max_kl=-1), QualityBudget(max_ppl_ratio=0.5)])
def test_budgets_that_mean_nothing_are_one_line(budget):
    with pytest.raises(SurgeonError):
        budget.validate()


def test_cli_salvage_by_budget_records_every_step_and_the_result(tmp_path):
    out = tmp_path / "salvaged"
    prompts = tmp_path / "prompts.txt"  # the canary's confirmation, kept short
    prompts.write_text("The capital of France is\nWater boils at\nTo make tea, boil the water,\n")
    # 0.06: packed, the demo text keeps layers 3-7 at KL 0.0416 searched, 0.0503 confirmed
    args = ["salvage", str(CANDIDATE), "--base", str(BASE), "--auto", "--max-kl", "0.06", "--prompts", str(prompts)]
    result = CliRunner().invoke(main, [*args, "-o", str(out), *EVAL])
    assert result.exit_code == 0, result.output
    assert "alone   layers 0 " in result.stdout and "canary pass" in result.stdout
    assert "confirm layers " in result.stdout
    assert "quality against base on training.txt (sha256 " in result.stdout
    assert "; the part a budget search did not see): perplexity x" in " ".join(result.stdout.split())
    manifest = json.loads((out / "prune_manifest.json").read_text())
    quality = manifest["quality"]
    assert quality["budget"] == {"max_kl": 0.06, "max_ppl_ratio": None}
    assert quality["eval"]["kl_mean"] <= 0.06 and quality["text"]["source"] == DEMO_TEXT.name
    assert quality["search"]["kl_mean"] <= 0.06 and quality["within_budget"] is True
    # both figures, on disjoint windows that together are the text's: each scores all its tokens but the first
    split, text = quality["split"], quality["text"]
    assert split["by"] == "documents" and split["search_windows"] >= 1 and split["confirm_windows"] >= 1
    assert split["search_windows"] + split["confirm_windows"] == text["windows"]
    assert quality["search"]["tokens"] + quality["eval"]["tokens"] == text["tokens"] - text["windows"]
    assert set(quality["layer_kl"]) == {str(n) for n in range(8)}
    kept = manifest["salvage"]["kept_layers"]  # packed windows: 3-7 (KL 0.045); per document 1-7
    assert kept and 0 not in kept  # layer 0 is over the budget alone
    assert {s["how"] for s in manifest["salvage"]["auto"]} == {"all", "alone", "budget", "canary"}
    assert CliRunner().invoke(main, ["verify", str(out), "--base", str(BASE)]).exit_code == 0
    # the composed plan's numbers on the held-out part are the written checkpoint's
    written = split_session(
        EvalSession(BASE, out, EvalOptions(text=str(TEXT), max_tokens=512, run=RunSettings(device="cpu")))
    )
    confirmed = written.confirm.evaluate_model().summary()
    assert confirmed["kl_mean"] == pytest.approx(quality["eval"]["kl_mean"], rel=1e-5, abs=1e-9)
    assert confirmed["tokens"] == quality["eval"]["tokens"]
    card = CliRunner().invoke(main, ["diff", str(BASE), str(out), "--markdown"])
    assert "## Quality against base" in card.stdout and DEMO_TEXT.name in card.stdout


def test_budget_options_need_auto(tmp_path):
    result = CliRunner().invoke(
        main,
        ["salvage", str(CANDIDATE), "--base", str(BASE), "--keep", "1", "--max-kl", "0.1", "-o", str(tmp_path / "o")],
    )
    assert result.exit_code == 2 and "give them with --auto" in result.stderr


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A prune measured with --eval: its manifest's quality record matches its bytes."""
    out = tmp_path_factory.mktemp("evaluated") / "pruned"
    result = CliRunner().invoke(main, ["prune", str(BASE), "-o", str(out), "--layers", "0-1", "-q", "--eval", *EVAL])
    assert result.exit_code == 0, result.output
    assert result.stderr.count("few tokens scored: 510 (eval), fewer than 4,096") == 1  # 512 packed: 2 windows of 256
    return out


def card(base, other) -> tuple:
    evidence = DiffOptions(trust_cache=False, trust_blob_names=False)
    return recorded_quality(diff_checkpoints(open_checkpoint(base), open_checkpoint(other), evidence))


def test_prune_eval_records_quality_and_the_card_shows_it(evaluated):
    manifest = json.loads((evaluated / "prune_manifest.json").read_text())
    assert 400 < manifest["quality"]["eval"]["tokens"] < 512 and manifest["quality"]["eval"]["ppl_ratio"] > 1
    summary, source = card(BASE, evaluated)
    assert summary == manifest["quality"]["eval"] and source == manifest["quality"]["text"]
    assert source["source"] == DEMO_TEXT.name and source["windows"] >= 1


def test_the_card_ignores_a_record_not_measured_on_these_bytes(evaluated, tmp_path):
    moved = tmp_path / "other"
    shutil.copytree(CANDIDATE, moved)  # other weights, with the evaluated prune's manifest
    shutil.copy(evaluated / "prune_manifest.json", moved / "prune_manifest.json")
    assert card(BASE, moved) is None
    assert card(CANDIDATE, evaluated) is None  # the right model against another base


@pytest.mark.parametrize(
    "bad",
    [
        {"ppl": "1e999"},
        {"kl_mean": float("nan")},
        {"tokens": True},
        {"tokens": 0},
        {"extra": 1},
        {"top1": [0.5]},
    ],
)
def test_the_card_ignores_a_malformed_record(evaluated, tmp_path, bad):
    copy = tmp_path / "copy"
    shutil.copytree(evaluated, copy)
    manifest = json.loads((copy / "prune_manifest.json").read_text())
    manifest["quality"]["eval"] |= bad
    (copy / "prune_manifest.json").write_text(json.dumps(manifest))
    assert card(BASE, copy) is None


def test_the_card_ignores_a_record_once_the_config_changed(evaluated, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(evaluated, copy)
    config = json.loads((copy / "config.json").read_text())
    config["final_logit_softcapping"] = 0.5  # same weights, another model
    (copy / "config.json").write_text(json.dumps(config))
    assert card(BASE, copy) is None


def test_eval_text_without_eval_and_a_bad_eval_text_are_refused_before_pruning(tmp_path):
    runner = CliRunner()
    alone = runner.invoke(main, ["prune", str(BASE), "-o", str(tmp_path / "a"), "--eval-text", str(TEXT)])
    assert alone.exit_code == 2 and "give --eval too" in alone.stderr
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe")
    early = runner.invoke(main, ["prune", str(BASE), "-o", str(tmp_path / "b"), "--eval", "--eval-text", str(bad)])
    assert early.exit_code == 2 and not (tmp_path / "b").exists()


def test_eval_refuses_models_that_do_not_share_a_vocabulary(tmp_path):
    import numpy as np

    from tests.helpers import make_variant, read_tensor

    name = "model.embed_tokens.weight"
    wider = read_tensor(BASE, name)
    grown = make_variant(tmp_path / "grown", src=BASE, replace={name: np.concatenate([wider, wider[:8]])})
    config = json.loads((grown / "config.json").read_text())
    config.get("text_config", config)["vocab_size"] = wider.shape[0] + 8
    (grown / "config.json").write_text(json.dumps(config))
    result = CliRunner().invoke(main, ["eval", str(grown), "--base", str(BASE), "--eval-tokens", "64"])
    assert result.exit_code == 2 and "do not share a vocabulary" in result.stderr


def test_salvage_drops_the_candidates_quality_record(evaluated, tmp_path):
    out = tmp_path / "kept"
    result = CliRunner().invoke(main, ["salvage", str(evaluated), "--base", str(BASE), "--keep", "0", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "quality" not in json.loads((out / "prune_manifest.json").read_text())
    measured = tmp_path / "measured"
    result = CliRunner().invoke(
        main, ["salvage", str(evaluated), "--base", str(BASE), "--keep", "0", "-o", str(measured), "--eval", *EVAL]
    )
    assert result.exit_code == 0, result.output
    assert 400 < card(BASE, measured)[0]["tokens"] < 512


def test_cli_eval_of_a_composed_plan(session):
    args = [
        "eval",
        str(CANDIDATE),
        "--base",
        str(BASE),
        "--eval-text",
        str(TEXT),
        "--eval-tokens",
        "512",
        "--per-document",
        "--device",
        "cpu",
    ]
    result = CliRunner().invoke(main, [*args, "--layers", "0", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["plan"] == [0]
    alone = session.evaluate_plans([[0]])[0].summary()
    assert data["totals"]["kl_mean"] == pytest.approx(alone["kl_mean"], rel=1e-5)
    bad = CliRunner().invoke(main, [*args, "--layers", "9"])
    assert bad.exit_code == 2 and "--layers" in bad.stderr


def test_salvage_json_prints_the_manifest_alone(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The capital of France is\n")
    args = ["salvage", str(CANDIDATE), "--base", str(BASE), "--auto", "--max-kl", "0.05", "--prompts", str(prompts)]
    args.append("--allow-over-budget")  # packed, the demo text confirms 3-7 at KL 0.0503 (searched 0.0416)
    result = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "out"), "--json", *EVAL])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["quality"]["search"]["kl_mean"] <= 0.05  # the steps went to stderr
    assert "alone   layers 0 " in result.stderr


# ---------- the search and its confirmation on disjoint text (issue 19, point 2) ----------


def packed_session(max_tokens=512):
    """The session `salvage --auto` makes from EVAL: the demo text packed (no --per-document)."""
    return EvalSession(
        BASE, CANDIDATE, EvalOptions(text=str(TEXT), max_tokens=max_tokens, run=RunSettings(device="cpu"))
    )


def test_the_split_gives_alternate_documents_to_each_part_packed_as_eval_packs_them():
    session = packed_session()
    split = split_session(session)
    documents, _ = load_eval_text(TEXT)
    tokenizer = load_tokenizer(BASE)
    window = session.text["window"]
    assert split.by == "documents"
    assert split.search.windows == make_windows(tokenizer, documents[0::2], window, 512)  # --eval-tokens each
    assert split.confirm.windows == make_windows(tokenizer, documents[1::2], window, 512)
    assert not {d for d in documents[0::2]} & {d for d in documents[1::2]}  # no text on both sides


def test_per_document_windows_hold_one_document_each():
    tokenizer = load_tokenizer(BASE)
    documents, _ = load_eval_text(TEXT)
    windows = document_windows(tokenizer, documents, 16, 400)
    assert sum(map(len, windows)) <= 400
    for window in windows:
        body = window[1:]  # after the BOS: a piece of one document's ids
        found = [tokenizer(d, add_special_tokens=False)["input_ids"] for d in documents]
        assert any(any(ids[i : i + len(body)] == body for i in range(len(ids))) for ids in found)


def test_the_search_and_the_confirmation_score_disjoint_windows(session):
    split = split_session(session)
    search, confirm = split.search.windows, split.confirm.windows
    assert split.by == "documents" and search and confirm
    assert split.text["windows"] == len(search) + len(confirm)
    assert split.text["tokens"] == sum(map(len, search + confirm))
    # the parts' figures differ: each is measured on its own text
    plan = sorted(session.changed_layers)
    kl = [part.evaluate_plans([plan])[0].summary()["kl_mean"] for part in (split.search, split.confirm)]
    assert kl[0] != kl[1]


def test_a_search_on_too_little_text_to_split_is_one_line(tmp_path):
    one = tmp_path / "one.txt"
    one.write_text("The capital of France is Paris.\n")
    session = EvalSession(BASE, CANDIDATE, EvalOptions(text=str(one), max_tokens=512, run=RunSettings(device="cpu")))
    with pytest.raises(SurgeonError, match="too little text to search on one part and confirm on another"):
        split_session(session)


def over_budget_max_kl(session) -> float:
    """A --max-kl the search meets and its confirmation exceeds: between the figures of
    layers 1-7 (the plan the search keeps under any budget from its search figure to layer 1's
    confirmation, layer 0 being far over alone) on the two parts."""
    split = split_session(packed_session())  # as the CLI splits EVAL's text
    plan = [1, 2, 3, 4, 5, 6, 7]
    searched, held_out = (part.evaluate_plans([plan])[0].summary()["kl_mean"] for part in (split.search, split.confirm))
    assert searched < held_out, "the construction needs a plan that does worse on the held-out part"
    return (searched + held_out) / 2


def test_over_budget_on_the_held_out_part_writes_and_exits_1_unless_allowed(session, tmp_path):
    max_kl = over_budget_max_kl(session)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The capital of France is\nWater boils at\nTo make tea, boil the water,\n")
    args = ["salvage", str(CANDIDATE), "--base", str(BASE), "--auto", "--max-kl", f"{max_kl:.6f}"]
    args += ["--prompts", str(prompts), *EVAL]
    over = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "over")])
    assert over.exit_code == 1, over.output
    line = [entry for entry in over.stderr.splitlines() if "over the budget" in entry]
    assert len(line) == 1 and "on the text the search did not see" in line[0]
    assert ", against KL" in line[0] and "searched (exit 1;" in line[0]
    quality = json.loads((tmp_path / "over" / "prune_manifest.json").read_text())["quality"]
    assert quality["search"]["kl_mean"] <= max_kl < quality["eval"]["kl_mean"]
    assert quality["within_budget"] is False
    assert CliRunner().invoke(main, ["verify", str(tmp_path / "over"), "--base", str(BASE)]).exit_code == 0
    allowed = CliRunner().invoke(main, [*args, "--allow-over-budget", "-o", str(tmp_path / "allowed")])
    assert allowed.exit_code == 0, allowed.output
    warned = [entry for entry in allowed.stderr.splitlines() if "over the budget" in entry]
    assert len(warned) == 1 and "exit 1" not in warned[0]


def test_allow_over_budget_needs_a_budget(tmp_path):
    args = ["salvage", str(CANDIDATE), "--base", str(BASE), "--auto", "--allow-over-budget", "-o", str(tmp_path / "o")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "--allow-over-budget goes with --max-kl or --max-ppl-ratio" in result.stderr


def test_few_scored_tokens_are_one_warning_line():
    args = ["eval", str(CANDIDATE), "--base", str(BASE), "--device", "cpu"]
    few = CliRunner().invoke(main, [*args, "--eval-text", str(TEXT), "--eval-tokens", "64", "--json"])
    assert few.exit_code == 0, few.output
    warnings = [line for line in few.stderr.splitlines() if "few tokens scored" in line]
    scored = json.loads(few.stdout)["totals"]["tokens"]
    assert warnings == [
        f"surgeon: warning: few tokens scored: {scored} (eval), fewer than 4,096; a figure on so few may not "
        "hold on other text: give more --eval-tokens, or a longer --eval-text from the model's own domain"
    ]
    enough = CliRunner().invoke(main, [*args, "--eval-tokens", "4400", "--layers", "7", "--json"])  # 17 x 255
    assert enough.exit_code == 0, enough.output
    assert json.loads(enough.stdout)["totals"]["tokens"] >= 4096 and "few tokens" not in enough.stderr
