"""`surgeon reshape`: slice a mask-mode checkpoint's removed heads and MLP channels out of its shapes."""

from __future__ import annotations

import json
from pathlib import Path

import click

from surgeon.cli.common import handle_errors, progress_for
from surgeon.text import inert


@click.command()
@click.argument("masked")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Folder to write (atomically).",
)
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@click.option("--no-progress", is_flag=True, help="No progress bars (they go to stderr, on a terminal only).")
@handle_errors
def reshape(masked: str, output: Path, force: bool, as_json: bool, no_progress: bool) -> None:
    """Slice the heads and MLP channels a mask-mode prune zeroed out of MASKED's shapes, write OUT.

    Every layer must have lost the same number of query heads (transformers has one
    num_attention_heads), and each KV group the same number or all of its heads (then its
    k/v rows go too); every layer the same number of MLP channels (one intermediate_size).
    Every tensor but the sliced projections is copied byte for byte.
    """
    from surgeon.prune.reshape import reshape as run_reshape
    from surgeon.prune.reshape import summary
    from surgeon.prune.reshape_check import transformers_problem

    result = run_reshape(
        masked, output, force=force, config_problem=transformers_problem, progress=progress_for(no_progress)
    )
    if as_json:
        click.echo(json.dumps(result.manifest, indent=2))
    else:
        click.echo(inert(summary(result)))
