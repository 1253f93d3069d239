"""One vocabulary across the commands (README, "Options: one vocabulary").

A name means one thing wherever it appears: --eval-text and --eval-tokens are the text a
model is measured on and how many of its tokens in all, in eval as in prune --eval and
salvage, with one default (EvalOptions'); prune's tokens per calibration sample are
--sample-tokens; every --base shows PATH_OR_HUB_ID; a Hub revision option names the
argument it qualifies. The spellings of the release before (eval's --text, --jsonl and
--max-tokens, prune's --max-tokens) still work, hidden from --help.
"""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from surgeon.cli.main import main
from surgeon.demo import DEMO_CANDIDATE, DEMO_MODEL, DEMO_TEXT
from surgeon.quality.options import EvalOptions

OLD_NAMES = {"eval": ["--text", "--jsonl", "--max-tokens"], "prune": ["--max-tokens"]}


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def help_of(command: str) -> str:
    result = invoke(command, "--help")
    assert result.exit_code == 0, result.output
    return result.output


def option_line(help_text: str, flag: str) -> str:
    """The help of option FLAG: its line and the indented lines after it, as one line."""
    lines = help_text.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"\s+{re.escape(flag)}\b", line))
    end = next((i for i in range(start + 1, len(lines)) if re.match(r"\s+-", lines[i])), len(lines))
    return " ".join(line.strip() for line in lines[start:end])


def test_help_shows_one_name_for_one_thing():
    for command in ("eval", "prune", "salvage"):
        text = help_of(command)
        assert "--eval-text FILE" in text and "--eval-tokens" in text, command
        default = f"[default: {EvalOptions().max_tokens}"
        assert default in option_line(text, "--eval-tokens"), command  # one default, EvalOptions'
        assert ".jsonl" in option_line(text, "--eval-text"), command  # either format, by its suffix
    assert "--sample-tokens" in help_of("prune")
    for command, old in OLD_NAMES.items():
        text = help_of(command)
        assert not [name for name in old if re.search(rf"{name}\b", text)], command
    for command in ("eval", "canary", "salvage", "verify"):
        assert "--base PATH_OR_HUB_ID" in help_of(command), command
    assert "Hub revision of CHECKPOINT" in help_of("inspect")
    diff = help_of("diff")
    assert "Hub revision of BASE" in diff and "Hub revision of OTHER" in diff
    assert "default: surgeon-demo" in help_of("demo")


def eval_json(*options) -> dict:
    args = ["eval", DEMO_CANDIDATE, "--base", DEMO_MODEL, "--device", "cpu", "--no-progress", "--json", *options]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_evals_old_spellings_still_work(tmp_path):
    new = eval_json("--eval-text", DEMO_TEXT, "--eval-tokens", 64)
    old = eval_json("--text", DEMO_TEXT, "--max-tokens", 64)
    assert old["totals"] == new["totals"] and old["options"]["max_tokens"] == 64
    lines = tmp_path / "lines.txt"  # JSON lines under a .txt name: --jsonl said what it holds
    lines.write_text("".join(json.dumps({"text": t}) + "\n" for t in DEMO_TEXT.read_text().splitlines() if t))
    jsonl = eval_json("--jsonl", lines, "--eval-tokens", 64)
    assert jsonl["options"]["text_format"] == "jsonl" and jsonl["text"]["source"] == "lines.txt"


@pytest.mark.parametrize(
    "args, old, new",
    [
        (
            ["eval", DEMO_CANDIDATE, "--base", DEMO_MODEL, "--max-tokens", "64", "--eval-tokens", "64"],
            "--max-tokens",
            "--eval-tokens",
        ),
        (
            ["eval", DEMO_CANDIDATE, "--base", DEMO_MODEL, "--text", DEMO_TEXT, "--eval-text", DEMO_TEXT],
            "--text",
            "--eval-text",
        ),
        (
            ["prune", DEMO_MODEL, "-o", "out", "--sample-tokens", "64", "--max-tokens", "64"],
            "--max-tokens",
            "--sample-tokens",
        ),
    ],
)
def test_an_old_and_a_new_name_together_is_one_line(args, old, new):
    result = invoke(*args)
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert f"{old} is the old name of {new}" in result.output


def test_prunes_old_max_tokens_is_tokens_per_sample(tmp_path):
    short = ["--layers", "0", "--calib", DEMO_TEXT, "--calib-tokens", 256, "--device", "cpu", "-q"]
    result = invoke("prune", DEMO_MODEL, "-o", tmp_path / "out", *short, "--max-tokens", 32)
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "out" / "prune_manifest.json").read_text())
    assert manifest["options"]["max_tokens"] == 32  # the manifest's key is the field's, unchanged
