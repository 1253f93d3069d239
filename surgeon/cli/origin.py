"""`surgeon origin QUANT CANDIDATE...`: which checkpoint a quant was made from (surgeon/origin).
Torch-free, like diff: the engine and gguf-py are imported inside the command."""

from __future__ import annotations

import json
import sys
import threading

import click

from surgeon.cli.common import (
    EXIT_DIFFERENT,
    EXIT_SAME,
    check_output,
    emit,
    force_option,
    handle_errors,
    one_blas_thread,
    output_option,
    progress_for,
)
from surgeon.errors import SurgeonError


@click.command()
@click.argument("quant")
@click.argument("candidates", nargs=-1, required=True)
@click.option(
    "--json", "as_json", is_flag=True, help="Print JSON (schema surgeon.origin/1): best, and every candidate's score."
)
@click.option("--workers", type=click.IntRange(1, 256), help="Threads comparing tensors (default: all cores).")
@click.option("-v", "--verbose", is_flag=True, help="List every tensor that disagrees, per candidate.")
@click.option("--no-progress", is_flag=True, help="No progress bar (it goes to stderr, on a terminal only).")
@output_option
@force_option
@handle_errors
def origin(quant, candidates, as_json, workers, verbose, no_progress, output, force) -> None:
    """Which of the CANDIDATE checkpoints the GGUF QUANT was made from.

    QUANT is a .gguf file, the first part of a split set, a folder of them, a Hub id of a GGUF
    repo (owner/repo:Q4_K_M picks one of several), or an NVFP4/FP8 safetensors checkpoint.
    Each tensor is compared with each candidate's by the strongest evidence its type allows:
    re-encoded bytes (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, MXFP4), codes rounded with
    the quant's own scales (the K-quants, NVFP4, FP8), or else NMSE within the type's measured
    bound (as `surgeon diff BASE QUANT`). Exit status: 0 when exactly one candidate agrees in
    every tensor, 1 when none or several do, 2 for trouble.
    """
    one_blas_thread()
    from surgeon.format.kinds import gguf_inputs, names_gguf  # reads no file, imports no format library

    for spec in candidates:
        if names_gguf(spec):
            raise SurgeonError(
                f"{spec}: a GGUF as CANDIDATE; name the safetensors checkpoints: surgeon origin QUANT CANDIDATE..."
            )
    from surgeon.atomic import check_output as check_not_over
    from surgeon.format.checkpoint import open_checkpoint
    from surgeon.format.quant_scheme import decoded_scheme
    from surgeon.origin.engine import find_origin, open_quant  # deferred: gguf-py and numpy (see the docstring)

    quant_input = open_quant(quant)
    opened = [(spec, open_checkpoint(spec)) for spec in candidates]  # a bad candidate: trouble before any work
    for spec, ckpt in opened:
        # its codes would be read as weights (the quant itself "agrees" on 3%); as diff's BASE
        scheme = decoded_scheme(ckpt)
        if scheme is not None:
            said = f"{scheme.method} {'+'.join(sorted(x.upper() for x in scheme.layouts))}"
            raise SurgeonError(
                f"{spec}: a quantized checkpoint ({said}) as CANDIDATE; "
                "name the float checkpoints: surgeon origin QUANT CANDIDATE..."
            )
    check_output(output, force, [ckpt for _, ckpt in opened] + ([quant_input.ckpt] if quant_input.ckpt else []))
    if output is not None and quant_input.gguf is not None:
        check_not_over(output, gguf_inputs(quant_input.gguf), force)
    progress = progress_for(no_progress)
    report = find_origin(quant_input, opened, workers=workers, progress=progress, cancel=threading.Event())
    if as_json:
        emit(json.dumps(report.to_json(), indent=2) + "\n", output, force)
    else:
        from surgeon.origin.render import render_origin

        emit(render_origin(report, verbose), output, force)
    sys.exit(EXIT_SAME if report.best is not None else EXIT_DIFFERENT)
