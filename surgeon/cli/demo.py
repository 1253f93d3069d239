"""`surgeon demo`: the whole story on the bundled tiny model."""

from __future__ import annotations

from pathlib import Path

import click

from surgeon.cli.common import console_for, handle_errors, say_plain
from surgeon.cli.recover import render_canary, render_verify

DEMO_FOLDER = "surgeon-demo"  # relative: under the current folder, never a shared place like /tmp


@click.command()
@click.argument("folder", required=False, default=DEMO_FOLDER, type=click.Path(path_type=Path, file_okay=False))
@click.option("--force", is_flag=True, help="Replace FOLDER if it exists.")
@handle_errors
def demo(folder, force) -> None:
    """The whole story on the bundled tiny model: prune, canary, salvage, diff, verify.

    Writes FOLDER (default: surgeon-demo, in the current folder): the pruned and salvaged
    checkpoints and the model-card sections. An existing FOLDER is kept unless --force."""
    from surgeon.demo import run_demo  # deferred: it runs the model (torch, the `prune` extra)

    console = console_for()
    run_demo(
        folder,
        say=say_plain(console),
        show_canary=lambda report: render_canary(report, console),
        show_verify=lambda report: render_verify(report, console),
        force=force,
    )
