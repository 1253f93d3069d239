"""The diff's output formats come from one registry (surgeon.diff.formats): the command's
flags, the exclusivity rule and the evidence rule are read from it, not written per format."""

import json

import pytest
from click.testing import CliRunner

from surgeon.cli.main import main
from surgeon.diff.engine import DiffOptions, diff_checkpoints
from surgeon.diff.formats import FORMATS, TERMINAL, RenderOptions
from surgeon.format.checkpoint import open_checkpoint
from tests.helpers import BASE, PRUNED


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_every_format_but_the_default_is_a_flag_of_diff():
    help_text = invoke("diff", "--help").output
    for fmt in FORMATS.values():
        assert (f"--{fmt.name} " in help_text) is (fmt is not TERMINAL)


@pytest.mark.parametrize("name", [n for n in FORMATS if FORMATS[n] is not TERMINAL])
def test_a_flag_prints_what_its_format_renders(name):
    report = diff_checkpoints(open_checkpoint(BASE), open_checkpoint(PRUNED), DiffOptions(cache_dir=None))
    expected = FORMATS[name].render(report, RenderOptions())
    result = invoke("diff", BASE, PRUNED, f"--{name}", "--no-progress")
    assert result.exit_code == 1
    if name == "json":  # the report names nothing that varies between runs but timings
        assert json.loads(result.output)["summary"] == json.loads(expected)["summary"]
    else:
        assert result.output == expected


def test_two_format_flags_are_one_line_and_exit_2():
    flags = [f"--{f.name}" for f in FORMATS.values() if f is not TERMINAL]
    result = CliRunner().invoke(main, ["diff", str(BASE), str(PRUNED), *flags])
    assert result.exit_code == 2
    assert result.output.strip().endswith("are exclusive: pick one")


def test_only_a_card_is_evidence_and_takes_the_commands_sections():
    assert [f.name for f in FORMATS.values() if f.evidence] == ["markdown"]
    report = diff_checkpoints(open_checkpoint(BASE), open_checkpoint(PRUNED), DiffOptions(cache_dir=None))
    card = FORMATS["markdown"].render(report, RenderOptions(sections=["## Quality against base", "", "x"]))
    assert card.endswith("## Quality against base\n\nx\n")
