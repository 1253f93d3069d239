"""Start-up budget of the everyday commands (issue 18): which modules `surgeon --help`,
`surgeon diff --help` and a `surgeon diff` import, and a generous ceiling on their import
time. The module lists are the real budget: a summed import time moves with the machine's
load, while an import of numpy or rich's tables into `--help` is there or not.
benchmarks/bench_startup.py measures the same commands against sha256sum."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import click
import pytest

from surgeon.cli.main import COMMANDS, SUMMARIES, main
from tests.helpers import BASE, PRUNED, ROOT

# Run `main(args)` in a fresh interpreter and print the modules it imported, as JSON.
PROBE = (
    "import json, sys\n"
    "from surgeon.cli.main import main\n"
    "try:\n"
    "    main(json.loads(sys.argv[1]))\n"
    "except SystemExit:\n"
    "    pass\n"
    "sys.stderr.write('MODULES=' + json.dumps(sorted(sys.modules)) + '\\n')\n"
)
# What no `--help` needs: the checkpoint reader and numpy (90 ms), rich's console, tables and
# bars (50 ms), the Hub client, the engines and the optional extras.
HEAVY_FOR_HELP = (
    "numpy",
    "safetensors",
    "huggingface_hub",
    "threadpoolctl",
    "rich",
    "torch",
    "transformers",
    "textual",
    "surgeon.format.checkpoint",
    "surgeon.format.writer",
    "surgeon.diff.engine",
    "surgeon.atomic",
)
# `surgeon diff --json` reads and compares (numpy), and prints JSON: no rich, no other
# renderer, no manifest or quality record, no writer, no Hub client for local folders.
HEAVY_FOR_DIFF_JSON = (
    "rich",
    "huggingface_hub",
    "safetensors",
    "torch",
    "transformers",
    "textual",
    "surgeon.format.writer",
    "surgeon.diff.render_terminal",
    "surgeon.diff.render_markdown",
    "surgeon.quality.record",
    "surgeon.recover.manifest",
)
# Seconds of imports (the sum of -X importtime's self times) for `surgeon diff --help`:
# 0.06-0.14 s on the shared 2-core box (no bytecode cache, as the tests run here), 0.26-0.44 s
# before the imports were deferred; the ceiling is loose enough for a loaded test run and
# still well below torch (1-3 s) or transformers.
HELP_IMPORT_BUDGET_S = 0.6


def imported(args: list[str]) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(args)], capture_output=True, text=True, cwd=ROOT, check=False
    )
    found = re.search(r"^MODULES=(.*)$", proc.stderr, re.MULTILINE)
    assert found, proc.stderr[-2000:]
    return json.loads(found.group(1))


def heavy(modules: list[str], names: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in names))


@pytest.mark.parametrize("args", [["--help"], ["diff", "--help"], ["inspect", "--help"]])
def test_help_imports_no_engine(args):
    assert heavy(imported(args), HEAVY_FOR_HELP) == []


def test_diff_json_imports_what_it_uses():
    modules = imported(["diff", str(BASE), str(PRUNED), "--json", "--no-progress"])
    assert "surgeon.diff.engine" in modules and "numpy" in modules  # the probe ran a diff
    assert heavy(modules, HEAVY_FOR_DIFF_JSON) == []


def import_seconds(args: list[str]) -> float:
    code = f"from surgeon.cli.main import main\ntry:\n    main({args!r})\nexcept SystemExit:\n    pass\n"
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, cwd=ROOT, check=False
    )
    selves = re.findall(r"^import time:\s+(\d+) \|", proc.stderr, re.MULTILINE)
    assert selves, proc.stderr[-2000:]
    return sum(map(int, selves)) / 1e6


def test_help_import_time_budget():
    """The best of three runs, so that one run slowed by other work does not fail it."""
    best = min(import_seconds(["diff", "--help"]) for _ in range(3))
    assert best < HELP_IMPORT_BUDGET_S, f"surgeon diff --help spent {best:.2f} s importing"


@pytest.mark.parametrize("width", [80, 300])
def test_the_listing_shows_each_commands_own_summary(width):
    """`surgeon --help` lists SUMMARIES without importing the commands: the listing must be
    what click's own would print from the commands' docstrings."""
    ctx = click.Context(main, info_name="surgeon", terminal_width=width, max_content_width=width)
    ours, clicks = ctx.make_formatter(), ctx.make_formatter()
    main.format_commands(ctx, ours)
    click.Group.format_commands(main, ctx, clicks)
    assert ours.getvalue() == clicks.getvalue()
    assert list(SUMMARIES) == list(COMMANDS)
