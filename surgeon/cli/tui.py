"""`surgeon tui`: the Textual app over a base and a candidate (the `tui` extra)."""

from __future__ import annotations

from pathlib import Path

import click

from surgeon.cli.common import handle_errors
from surgeon.demo import DEMO_CANDIDATE, DEMO_MODEL, DEMO_TEXT
from surgeon.errors import SurgeonError
from surgeon.format.checkpoint import open_checkpoint


@click.command()
@click.argument("base", required=False)
@click.argument("candidate", required=False)
@click.option(
    "--tokenizer",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Tokenizer folder for the canary and prune (default: the base's own).",
)
@click.option(
    "--eval-text",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Text the eval (e) scores plans on (default: the bundled held-out text; the demo pair: its training text).",
)
@handle_errors
def tui(base, candidate, tokenizer, eval_text) -> None:
    """Interactive diff, rollback plan, canary, eval, prune and write over BASE and CANDIDATE.

    With no arguments it opens the bundled demo pair: the tiny trained model and its
    all-layers prune, whose canary fails.
    """
    if (base is None) != (candidate is None):
        raise SurgeonError("give both BASE and CANDIDATE, or neither for the bundled demo pair")
    if base is None:  # the tiny model knows only its training text: English prose is noise to it
        base, candidate, eval_text = str(DEMO_MODEL), str(DEMO_CANDIDATE), eval_text or DEMO_TEXT
    paths = [checkpoint_path(spec) for spec in (base, candidate)]  # bad input: one line, before the screen
    # Deferred: textual is the `tui` extra; a missing one is reported in one line by handle_errors.
    from surgeon.tui.app import SurgeonApp

    SurgeonApp(*paths, tokenizer=tokenizer, eval_text=eval_text).run()


def checkpoint_path(spec: str) -> Path:
    """What the app opens for `spec`: a .safetensors file stays that one file, compared as
    `diff` compares it (it used to open the file's whole folder); a folder or a Hub id is
    its folder. open_checkpoint checks it first, so bad input is one line."""
    checkpoint = open_checkpoint(spec)
    path = Path(spec).expanduser()
    return path.resolve() if path.is_file() else checkpoint.root
