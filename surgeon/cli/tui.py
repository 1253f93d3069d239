"""`surgeon tui`: the Textual app over a base and a candidate (the `tui` extra)."""

from __future__ import annotations

from pathlib import Path

import click

from surgeon.cli.common import handle_errors
from surgeon.demo import DEMO_CANDIDATE, DEMO_MODEL
from surgeon.errors import SurgeonError
from surgeon.format.checkpoint import open_checkpoint
from surgeon.format.kinds import names_gguf  # reads no file, imports no format library


@click.command()
@click.argument("base", required=False)
@click.argument("candidate", required=False)
@click.option(
    "--tokenizer",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Tokenizer folder for the canary and prune (default: the base's own).",
)
@click.option(
    "--prompts",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Prompts the canary (c, a) asks, as `surgeon canary --prompts` reads them "
    "(default: the bundled set; the demo model: its own prompts).",
)
@click.option(
    "--eval-text",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Text the eval (e) scores plans on (default: the bundled held-out text; the demo model: its training text).",
)
@handle_errors
def tui(base, candidate, tokenizer, prompts, eval_text) -> None:
    """Interactive diff, rollback plan, canary, eval, prune and write over BASE and CANDIDATE.

    With no arguments it opens the bundled demo pair: the tiny trained model and its
    all-layers prune, whose canary fails. With the demo model as BASE, the canary and the
    eval use the demo's own prompts and text, as `surgeon demo` does; the Canary tab names them.

    With CANDIDATE a GGUF quant of BASE (a .gguf file, the first part of a split set, or a
    folder of them), it shows `surgeon diff BASE QUANT` read only: the Overview and Tensors
    tabs, each tensor's NMSE against its type's bound, and per head for attention.
    """
    if (base is None) != (candidate is None):
        raise SurgeonError("give both BASE and CANDIDATE, or neither for the bundled demo pair")
    if base is None:
        base, candidate = str(DEMO_MODEL), str(DEMO_CANDIDATE)
    if names_gguf(base) or names_gguf(candidate) or _quant_spec(base, candidate) is not None:
        open_quant_pair(base, candidate, tokenizer, prompts, eval_text)
        return
    paths = [checkpoint_path(spec) for spec in (base, candidate)]  # bad input: one line, before the screen
    # Deferred: textual is the `tui` extra; a missing one is reported in one line by handle_errors.
    from surgeon.tui.app import SurgeonApp

    # A bad prompts file is one line here too: the app reads it before the screen starts.
    SurgeonApp(*paths, tokenizer=tokenizer, eval_text=eval_text, prompts=prompts).run()


def open_quant_pair(base: str, quant: str, tokenizer, prompts, eval_text) -> None:
    """BASE against a GGUF quant of it, read only (the Overview and Tensors tabs). What the
    diff would refuse at once is refused here, in one line, before the screen: a GGUF as
    BASE, options that only the canary and eval read, a GGUF that is no GGUF, one of another
    architecture, or one with no tensor of BASE's shape."""
    if names_gguf(base):
        raise SurgeonError(f"{base}: a GGUF as BASE; name the safetensors checkpoint first: surgeon tui BASE QUANT")
    given = [
        name
        for name, value in (("--tokenizer", tokenizer), ("--prompts", prompts), ("--eval-text", eval_text))
        if value
    ]
    if given:
        raise SurgeonError(f"{given[0]}: a quant pair is only compared (no canary or eval); drop the option")
    from surgeon.diff.quant import check_maps
    from surgeon.format.gguf import open_gguf
    from surgeon.format.quant_scheme import decoded_scheme

    base_ckpt = open_checkpoint(base)
    if decoded_scheme(base_ckpt) is not None:
        raise SurgeonError(_QUANTIZED_BASE.format(base=base))
    found = _quant_spec(base, quant)
    if isinstance(found, str):
        check_maps(base_ckpt, open_gguf(found))  # the headers only: the rows are read in the app
    from surgeon.tui.quant import QuantApp

    QuantApp(base_ckpt, found if found is not None else quant).run()


_QUANTIZED_BASE = "{base}: a quantized checkpoint as BASE; name the float checkpoint first: surgeon tui BASE QUANT"


def _quant_spec(base: str, quant: str):
    """What the quant app opens for QUANT: a GGUF path (given, or a Hub repo's cached file:
    owner/repo:Q4_K_M), an NVFP4/FP8 checkpoint that BASE is not, or None (a checkpoint pair)."""
    if names_gguf(quant):
        return quant
    from surgeon.format.hub_gguf import hub_gguf
    from surgeon.format.quant_scheme import decoded_scheme

    found = hub_gguf(quant, None)
    if found is not None:
        return str(found)
    if names_gguf(base):
        return None
    other = open_checkpoint(quant)
    quantized, base_quantized = decoded_scheme(other) is not None, decoded_scheme(open_checkpoint(base)) is not None
    if base_quantized and not quantized:  # as surgeon diff says it
        raise SurgeonError(_QUANTIZED_BASE.format(base=base))
    return other if quantized and not base_quantized else None


def checkpoint_path(spec: str) -> Path:
    """What the app opens for `spec`: a .safetensors file stays that one file, compared as
    `diff` compares it (it used to open the file's whole folder); a folder or a Hub id is
    its folder. open_checkpoint checks it first, so bad input is one line."""
    checkpoint = open_checkpoint(spec)
    path = Path(spec).expanduser()
    return path.resolve() if path.is_file() else checkpoint.root
