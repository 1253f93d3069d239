"""`surgeon eval`: the numbers against a full transformers forward, composed plans against
written salvages, the windows, the text formats and the command line."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from surgeon.cli.main import main
from surgeon.demo import DEMO_CANDIDATE, DEMO_MODEL, DEMO_TEXT
from surgeon.errors import Cancelled, SurgeonError
from surgeon.quality.evaluate import (
    EvalOptions,
    EvalSession,
    cut_windows,
    load_eval_text,
    make_windows,
    packed_stream,
    quantile,
)
from surgeon.quality.record import measured_text, text_label
from surgeon.quality.render import outliers, quality_markdown, render_eval, short_windows_warning
from surgeon.recover.salvage import salvage
from surgeon.runtime.settings import RunSettings
from surgeon.runtime.stream import LayerStream
from surgeon.runtime.tokenizer import load_tokenizer
from tests.helpers import ROOT, make_variant, read_tensor
from tests.runtime.test_settings import EVAL_OPTION_KEYS

TRAINED = DEMO_MODEL
PRUNED = DEMO_CANDIDATE
# Sentences the tiny model was trained on, and some it was not: windows that differ in KL.
LINES = (DEMO_TEXT).read_text().splitlines()
TEXT = "\n\n".join([" ".join(LINES[:12]), " ".join(LINES[12:20]), "Stars flicker because the air above us moves."])


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "heldout.txt"
    path.write_text(TEXT)
    return path


def options(text_file, dtype: str = "auto", **kw) -> EvalOptions:
    run = RunSettings(device="cpu", dtype=dtype)
    return EvalOptions(**{"text": str(text_file), "window": 40, "max_tokens": 400, "batch_size": 3, "run": run} | kw)


@pytest.fixture(scope="module")
def session(text_file) -> EvalSession:
    return EvalSession(TRAINED, PRUNED, options(text_file))


@pytest.fixture(scope="module")
def pruned_report(session):
    return session.evaluate_model()


def close(report, expected: dict, rel=1e-5):
    for key, value in expected.items():
        assert getattr(report, key) == pytest.approx(value, rel=rel, abs=1e-9), key


# -- the numbers ---------------------------------------------------------------------


def reference(windows: list[list[int]]) -> dict:
    """The same numbers from transformers' own full forward of each model, window by window."""
    from transformers import AutoModelForCausalLM

    models = [AutoModelForCausalLM.from_pretrained(str(p), dtype=torch.float32).eval() for p in (TRAINED, PRUNED)]
    nll_b, nll_m, kl, top1 = [], [], [], []
    with torch.no_grad():
        for window in windows:
            ids = torch.tensor([window])
            lp_b, lp_m = (m(input_ids=ids).logits[0, :-1].float().log_softmax(-1) for m in models)
            target = ids[0, 1:, None]
            nll_b.append(-lp_b.gather(1, target)[:, 0])
            nll_m.append(-lp_m.gather(1, target)[:, 0])
            kl.append((lp_b.exp() * (lp_b - lp_m)).sum(-1))
            top1.append(lp_b.argmax(-1) == lp_m.argmax(-1))
    nll_b, nll_m, kl, top1 = (torch.cat(x).double() for x in (nll_b, nll_m, kl, top1))
    return {
        "tokens": len(kl),
        "ppl_base": math.exp(float(nll_b.mean())),
        "ppl": math.exp(float(nll_m.mean())),
        "kl_mean": float(kl.mean()),
        "kl_p99": float(torch.quantile(kl, 0.99)),
        "top1": float(top1.mean()),
    }


def test_numbers_match_a_full_transformers_forward(session, pruned_report):
    expected = reference(session.windows)
    close(pruned_report, expected)
    assert pruned_report.ppl_ratio == pytest.approx(expected["ppl"] / expected["ppl_base"], rel=1e-5)
    assert pruned_report.kl_mean > 1e-3 and pruned_report.top1 < 1  # the models do differ
    assert pruned_report.plan is None
    windows = pruned_report.windows
    assert [w.index for w in windows] == list(range(len(session.windows)))
    assert [w.tokens for w in windows] == [len(w) - 1 for w in session.windows]  # padded batches score no pad
    assert sum(w.tokens * math.log(w.ppl) for w in windows) == pytest.approx(
        pruned_report.tokens * math.log(pruned_report.ppl), rel=1e-9
    )


def test_base_against_itself_is_exactly_the_same(text_file):
    report = EvalSession(TRAINED, TRAINED, options(text_file)).evaluate_model()
    assert (report.kl_mean, report.kl_p99, report.top1, report.ppl_ratio) == (0.0, 0.0, 1.0, 1.0)
    assert all(w.kl_mean == 0 and w.top1 == 1 for w in report.windows)


def test_bf16_logits_are_made_in_float32(text_file, pruned_report):
    session = EvalSession(TRAINED, PRUNED, options(text_file, dtype="bfloat16"))
    report = session.evaluate_model()
    assert report.options["dtype"] == "bfloat16"
    assert report.ppl_base == pytest.approx(pruned_report.ppl_base, rel=0.03)
    assert report.kl_mean == pytest.approx(pruned_report.kl_mean, rel=0.1)
    (itself,) = session.evaluate_plans([[]])
    assert itself.kl_mean == 0 and itself.top1 == 1


def test_quantile_is_torchs():
    values = torch.rand(1001, generator=torch.Generator().manual_seed(0))
    for q in (0.0, 0.5, 0.99, 1.0):
        assert quantile(values, q) == pytest.approx(float(torch.quantile(values.double(), q)), rel=1e-12)
    assert math.isnan(quantile(torch.tensor([]), 0.99))


# -- composed plans ----------------------------------------------------------------------


def count_loads(monkeypatch) -> list[tuple[int, bool]]:
    """(layer, with the candidate's tensors) of every LayerStream.load_layer from now on."""
    calls = []
    real = LayerStream.load_layer

    def counting(self, index, replace=None):
        calls.append((index, bool(replace)))
        return real(self, index, replace)

    monkeypatch.setattr(LayerStream, "load_layer", counting)
    return calls


def test_plans_of_all_and_no_layers_are_the_candidate_and_the_base(text_file, pruned_report, monkeypatch):
    session = EvalSession(TRAINED, PRUNED, options(text_file))
    changed = sorted(session.changed_layers)
    assert changed == list(range(8))
    loads = count_loads(monkeypatch)
    everything, nothing, some = session.evaluate_plans([changed, [], [5, 3]])
    assert sorted(loads) == sorted(set(loads))  # each layer at most once per source
    assert {i for i, cand in loads if cand} == set(changed) and {i for i, cand in loads if not cand} == set(changed)
    close(everything, {k: getattr(pruned_report, k) for k in ("ppl_base", "ppl", "kl_mean", "kl_p99", "top1")})
    assert everything.plan == changed
    assert (nothing.kl_mean, nothing.top1, nothing.ppl_ratio, nothing.plan) == (0.0, 1.0, 1.0, [])
    assert some.plan == [3, 5] and 0 < some.kl_mean < everything.kl_mean

    loads.clear()  # the base's stream is cached now: a later call starts at the first kept layer
    (again,) = session.evaluate_plans([[5, 3]])
    assert loads == [(3, True), (4, False), (5, True), (6, False), (7, False)]
    close(again, {k: getattr(some, k) for k in ("ppl", "kl_mean", "kl_p99", "top1")}, rel=1e-12)


def test_without_a_cache_every_call_runs_the_base_again(text_file, monkeypatch):
    session = EvalSession(TRAINED, PRUNED, options(text_file, cache_budget_bytes=0))
    session.evaluate_plans([[6]])
    loads = count_loads(monkeypatch)
    (report,) = session.evaluate_plans([[6]])
    assert loads == [(i, False) for i in range(7)] + [(6, True), (7, False)]
    assert report.plan == [6]


def test_single_layer_plans_equal_the_salvaged_checkpoints(session, tmp_path):
    layers = [0, 5]  # sliding attention from the first layer on; full attention (another head size)
    composed = session.evaluate_plans([[k] for k in layers])
    for layer, report in zip(layers, composed, strict=True):
        out = tmp_path / f"keep-{layer}"
        salvage(PRUNED, TRAINED, [layer], out)
        written = EvalSession(TRAINED, out, session.options).evaluate_model()
        close(report, {k: getattr(written, k) for k in ("ppl_base", "ppl", "kl_mean", "kl_p99", "top1")})
        assert report.plan == [layer]


def test_a_change_outside_the_layers_cannot_be_composed(text_file, tmp_path):
    norm = "model.norm.weight"
    other = make_variant(tmp_path / "norm", src=TRAINED, replace={norm: read_tensor(TRAINED, norm) * 1.1})
    session = EvalSession(TRAINED, other, options(text_file))
    with pytest.raises(SurgeonError, match="outside any layer"):
        session.evaluate_plans([[0]])
    assert session.evaluate_model().kl_mean > 0  # as a whole model it is fine
    with pytest.raises(SurgeonError, match="layer 8 does not exist"):
        EvalSession(TRAINED, PRUNED, options(text_file)).evaluate_plans([[8]])


def test_progress_and_cancel(text_file):
    class Sink:
        def __init__(self):
            self.started = []

        def start(self, description, total, unit="bytes"):
            self.started.append(description)

        def advance(self, amount):
            pass

        def stop(self):
            pass

    sink, cancel = Sink(), threading.Event()
    session = EvalSession(TRAINED, PRUNED, options(text_file), progress=sink, cancel=cancel)
    session.evaluate_model()
    assert sink.started == [f"eval layer {i}/7" for i in range(8)] + ["eval logits"]
    cancel.set()
    with pytest.raises(Cancelled):
        session.evaluate_plans([[1]])


# -- text and windows ------------------------------------------------------------------


def test_documents_are_packed_into_full_windows_with_one_bos():
    tok = load_tokenizer(TRAINED)
    bos = tok.bos_token_id
    docs = [" ".join(LINES[:10]), "<bos>" + " ".join(LINES[10:14]), "Hi"]
    ids = [tok(d, add_special_tokens=False)["input_ids"] for d in docs]
    ids[1] = ids[1][1:] if ids[1][0] == bos else ids[1]  # a document's own BOS goes
    separator = tok("\n\n", add_special_tokens=False)["input_ids"]
    stream = [*ids[0], *separator, *ids[1], *separator, *ids[2]]
    assert packed_stream(tok, docs, 10_000) == stream
    windows = make_windows(tok, docs, window=16, max_tokens=10_000)
    assert all(w[0] == bos and w.count(bos) == 1 for w in windows)
    assert [t for w in windows for t in w[1:]] == stream  # nothing lost, nothing doubled
    assert [len(w) for w in windows] == [16] * (len(stream) // 15) + [len(stream) % 15 + 1] * bool(len(stream) % 15)


def test_a_budget_smaller_than_the_text_takes_full_windows_spread_over_it():
    stream = list(range(10, 10 + 15 * 7 + 4))  # 7 full windows of 15 ids after the BOS, 4 left over
    every = cut_windows(stream, 1, 16, 10_000)
    assert len(every) == 8 and len(every[-1]) == 5
    assert cut_windows(stream, 1, 16, 37) == [every[1], every[5]]  # 2 windows, the middles of each half
    assert cut_windows(stream, 1, 16, 48) == [every[1], every[3], every[5]]
    assert cut_windows(stream, 1, 16, 10) == [every[0][:10]]  # under one window: its first ids
    assert cut_windows(stream, None, 16, 10_000)[0] == stream[:16]  # no BOS: 16 ids of text
    assert cut_windows([5], 1, 16, 100) == [[1, 5]] and cut_windows([], 1, 16, 100) == []


def test_paragraphs_of_a_plain_text_file_share_windows(tmp_path):
    """issue 19: a document split at blank lines gave one short window per paragraph."""
    text = tmp_path / "notes.txt"
    text.write_text("\n\n".join(f"Note {i}: red and blue." for i in range(40)))
    docs, _ = load_eval_text(text)
    windows = make_windows(load_tokenizer(TRAINED), docs, window=128, max_tokens=10_000)
    assert len(docs) == 40 and all(len(w) == 128 for w in windows[:-1]) and len(windows) < len(docs) / 4


def test_text_formats_and_records(tmp_path):
    plain = tmp_path / "notes.txt"
    plain.write_text("First document,\nwrapped.\n\nSecond one.\n\n\n")
    docs, record = load_eval_text(plain)
    assert docs == ["First document, wrapped.", "Second one."]
    import hashlib

    assert record == {"source": "notes.txt", "file_sha256": hashlib.sha256(plain.read_bytes()).hexdigest()}
    lines = tmp_path / "docs.jsonl"
    lines.write_text(json.dumps({"text": "One\n\nstill one"}) + "\n\n" + json.dumps({"text": "Two"}) + "\n")
    assert load_eval_text(lines)[0] == ["One\n\nstill one", "Two"]
    forced = tmp_path / "docs.data"
    forced.write_text(lines.read_text())
    assert load_eval_text(forced, "jsonl")[0] == ["One\n\nstill one", "Two"]
    assert len(load_eval_text(forced)[0]) == 2  # plain text: the same lines as paragraphs


def test_the_bundled_heldout_text_is_the_default():
    import importlib.resources

    files = sorted(f.name for f in (importlib.resources.files("surgeon") / "_data" / "heldout").iterdir())
    docs, record = load_eval_text(None)
    assert record["source"] == "bundled:heldout" and len(record["file_sha256"]) == 64
    assert len(docs) == len([f for f in files if f.endswith(".txt")]) > 0


def test_a_tokenizer_past_the_embedding_is_one_error(tmp_path, text_file):
    embed = "model.embed_tokens.weight"
    small = make_variant(tmp_path / "small", src=TRAINED, replace={embed: read_tensor(TRAINED, embed)[:100]})
    with pytest.raises(SurgeonError, match=r"embedding of .* has 100 rows") as caught:
        EvalSession(small, small, options(text_file))
    assert caught.value.option == "tokenizer"


# -- command line -----------------------------------------------------------------------


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def eval_args(text_file, *more):
    return ["eval", PRUNED, "--base", TRAINED, "--eval-text", text_file, "--window", 40, "--eval-tokens", 400, *more]


def test_cli_json(text_file, pruned_report):
    result = run(*eval_args(text_file, "--device", "cpu", "--json", "--batch-size", 3))
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # stderr has the warning that few tokens were scored
    assert data["schema"] == "surgeon.eval/1" and data["plan"] is None
    assert data["totals"] == pruned_report.summary()
    assert set(data["totals"]) == {"tokens", "ppl_base", "ppl", "ppl_ratio", "kl_mean", "kl_p99", "top1"}
    assert data["options"]["text"] == "heldout.txt" and str(text_file.parent) not in result.output
    assert list(data["options"]) == EVAL_OPTION_KEYS  # device, dtype, tokenizer flat, as before RunSettings
    assert (data["options"]["device"], data["options"]["dtype"], data["options"]["tokenizer"]) == (
        "cpu",
        "float32",
        None,
    )
    assert data["text"]["source"] == "heldout.txt" and data["text"]["windows"] == len(data["windows"])
    assert set(data["windows"][0]) == {"index", "tokens", "ppl_base", "ppl", "kl_mean", "kl_p99", "top1"}


def test_cli_tables_fit_80_columns_and_names_are_inert(text_file, pruned_report):
    import io

    from rich.console import Console

    data = pruned_report.to_json() | {"model": "model\x1b[31m[red]x"}
    data["windows"][1]["kl_mean"] = 100.0  # an outlier
    buffer = io.StringIO()
    render_eval(data, Console(file=buffer, width=80, color_system=None))
    out = buffer.getvalue()
    assert "\x1b" not in out and "\\x1b[31m[red]x" in out
    assert max(map(len, out.splitlines())) <= 80
    assert outliers(data["windows"]) == {1}
    assert "! mean KL over 3x the median window's" in out
    assert any(line.lstrip("│ ").startswith("!") and "100" in line for line in out.splitlines())
    result = run(*eval_args(text_file, "--device", "cpu"))
    assert result.exit_code == 0 and "perplexity ratio" in result.output and "Per window" in result.output


def test_bad_text_is_one_line(tmp_path, text_file):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9\n".encode("latin-1"))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n\n")
    for path, expected in (
        (tmp_path / "missing.txt", "missing.txt"),
        (bad, "cannot read the evaluation text"),
        (empty, "the evaluation text is empty"),
        (tmp_path, "is a directory"),
    ):
        result = run("eval", PRUNED, "--base", TRAINED, "--eval-text", path, "--device", "cpu")
        output = result.output.strip()
        assert result.exit_code == 2 and len(output.splitlines()) == 1, output
        assert expected in output and "Traceback" not in output, output
    result = run(*eval_args(text_file, "--jsonl", text_file))
    assert result.exit_code == 2 and "exclusive" in result.output


def test_quality_markdown_and_no_torch_for_it():
    summary = {"tokens": 8176, "ppl_base": 18.08, "ppl": 18.28, "ppl_ratio": 18.28 / 18.08}
    summary |= {"kl_mean": 0.0123, "kl_p99": 0.151, "top1": 0.973}
    text = {"source": "a|b.txt", "file_sha256": "ab" * 32, "windows": 16, "window": 512, "bos_token_id": 1}
    lines = quality_markdown(summary, text=text)
    assert lines[0] == "## Quality against base"
    assert "| perplexity | 18.08 | 18.28 (+1.1%) |" in lines
    assert "| top-1 agreement with base | | 97.3% |" in lines
    label = "a|b.txt (sha256 abababababab; 8,176 tokens scored in 16 windows of up to 512; each window starts with BOS)"
    assert f"Teacher-forced on `{label}`, against the base model." in lines[2]  # a code span: inert
    assert text_label({"source": "bundled:heldout", "windows": "16", "bos_token_id": None}, 5) == (
        "the bundled held-out text (5 tokens scored; no BOS)"  # a manifest's wrong types are left out
    )
    assert text_label(None) == "an unnamed text"
    searched = {"text": {"source": "t.txt"}, "budget": {"max_kl": 0.05}, "eval": summary}
    assert text_label(measured_text(searched)) == (
        "t.txt (the text a budget search chose the plan on, so the figures are biased low)"
    )
    split = searched | {"search": summary, "split": {"confirm_windows": 3}}
    assert (
        text_label(measured_text(split), 7)
        == "t.txt (7 tokens scored in 3 windows; the part a budget search did not see)"
    )
    code = "import sys, surgeon.quality.render\nprint('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.stdout.strip() == "False", proc.stderr


def test_most_windows_short_is_said_in_one_line():
    def data(sizes, window=256):
        return {"text": {"window": window}, "options": {"window": window}, "windows": [{"tokens": n} for n in sizes]}

    line = short_windows_warning(data([20, 30, 40, 300]))
    assert line == (
        "3 of 4 windows are under a quarter of 256 tokens (median 36): little context per token; "
        "without --per-document the documents are packed into full windows"
    )
    assert short_windows_warning(data([20, 255, 255])) is None  # packed: at most the last is short
    assert short_windows_warning(data([])) is None
