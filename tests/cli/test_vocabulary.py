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


# Each command's options, as --help showed them before the run settings became one record
# (RunSettings, flattened back into --device, --dtype, --tokenizer and canary's --quant).
RUN = ["--device", "--dtype", "--tokenizer"]
CANARY = [
    "--prompts",
    "--add-prompts",
    "--max-new-tokens",
    "--max-drift",
    "--max-self-ratio",
    "--repetition-margin",
    "--nonprintable-margin",
    "--min-tokens",
    "--min-agreement",
    "--max-fail-frac",
    "--bos",
]
EVAL = ["--eval", "--eval-text", "--eval-tokens"]
OPTIONS = {
    "prune": [
        *["-o", "--output", "--mode", "--prune-frac", "--layers", "--layer-frac", "--importance"],
        *["--ffn-frac", "--ffn-importance", "--ffn-ridge-rel", "--importance-quant"],
        *["--heal", "--ridge-rel", "--propagate", "--calib", "--calib-dataset", "--calib-tokens"],
        *["--sample-tokens", "--calib-samples", "--batch-size", *RUN, "--offload-activations", "--workdir"],
        *["--force", "--fsync", *EVAL, "--json", "-q", "--quiet", "--no-progress"],
    ],
    "eval": [
        *[
            "--base",
            "--eval-text",
            "--window",
            "--per-document",
            "--eval-tokens",
            "--batch-size",
            *RUN,
            "--layers",
            "--json",
        ],
        "--no-progress",
    ],
    "canary": ["--base", "--quant", "--no-cache", "--json", "--no-progress", *CANARY, *RUN],
    "salvage": [
        *["--base", "--keep", "--auto", "--max-kl", "--max-ppl-ratio", "--allow-over-budget", *EVAL],
        *["--keep-non-layer", "--canary"],
        *["-o", "--output", "--force", "--fsync", "--json", "--no-progress", *CANARY, *RUN],
    ],
}


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_the_options_of_the_model_running_commands_are_unchanged(name):
    import click

    command = main.get_command(click.Context(main), name)
    options = [p for p in command.params if isinstance(p, click.Option) and not p.hidden]
    shown = [opt for p in options for opt in p.opts if opt != "--help"]
    assert sorted(shown) == sorted(OPTIONS[name])
    defaults = {p.name: p.default for p in command.params}
    assert (defaults["device"], defaults["dtype"], defaults["tokenizer"]) == ("auto", "auto", None)


@pytest.mark.parametrize("name", ["canary", "salvage"])
def test_canary_and_salvage_take_records_not_kw(name):
    import inspect

    import click

    from surgeon.recover.canary.checks import CanaryOptions
    from surgeon.runtime.settings import RunSettings

    callback = main.get_command(click.Context(main), name).callback
    parameters = inspect.signature(callback).parameters  # the command's own, through its wrappers
    assert not [p for p in parameters.values() if p.kind is inspect.Parameter.VAR_KEYWORD]
    assert parameters["run"].annotation in (RunSettings, "RunSettings")
    assert parameters["options"].annotation in (CanaryOptions, "CanaryOptions")


def test_a_nested_record_is_flattened_into_flags_and_built_again(tmp_path):
    import click

    from surgeon.cli.options import build, options_from
    from surgeon.prune.options import PruneOptions
    from surgeon.runtime.settings import RunSettings

    seen = {}

    @click.command()
    @options_from(PruneOptions)
    @options_from(RunSettings, only=["quant"], into="run")
    def command(run, **kw):
        seen["options"], seen["run"] = build(PruneOptions, kw), run

    args = ["--device", "cpu", "--dtype", "fp32", "--tokenizer", tmp_path, "--quant", "nf4", "--layers", "0"]
    result = CliRunner().invoke(command, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert seen["options"].run == RunSettings(device="cpu", dtype="fp32", tokenizer=str(tmp_path))
    assert seen["options"].layers == "0" and seen["run"] == RunSettings(quant="nf4")
