"""`surgeon diff` and `surgeon inspect`: read headers and bytes, never torch.

The engine is imported inside the commands, not here: `surgeon --help` and `surgeon diff
--help` then import click alone (the reader and the diff engine bring numpy and threadpoolctl,
90-150 ms), and a run imports only the renderer it prints with (the terminal one rich's
console and tables, 30 ms; the Markdown one the manifest reader). -X importtime, bytecode
cached, the shared 2-core box at load 3: `import surgeon.cli.diff` 320-430 ms before, 26-38 ms
after (click included).
"""

from __future__ import annotations

import functools
import json
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from surgeon.cli.common import (
    EXIT_DIFFERENT,
    EXIT_SAME,
    check_output,
    download_option,
    emit,
    force_option,
    handle_errors,
    one_blas_thread,
    output_option,
    progress_for,
    render_rich,
    warn,
)
from surgeon.diff.formats import FORMATS, TERMINAL, DiffFormat, RenderOptions
from surgeon.errors import SurgeonError
from surgeon.progress import NoProgress
from surgeon.text import inert

if TYPE_CHECKING:
    from surgeon.format.hub_pair import HubMatch


def _format_option(fmt: DiffFormat):
    return click.option(f"--{fmt.name}", f"format_{fmt.name}", is_flag=True, help=fmt.help)


def format_options(func):
    """One flag per output format of the registry (diff.formats), the default one excepted."""
    for fmt in reversed([f for f in FORMATS.values() if f is not TERMINAL]):
        func = _format_option(fmt)(func)
    return func


@click.command()
@click.argument("base")
@click.argument("other")
@click.option("--base-revision", help="Hub revision of BASE (branch, tag or commit).")
@click.option("--other-revision", help="Hub revision of OTHER (branch, tag or commit).")
@download_option
@format_options
@click.option("--no-hash", is_flag=True, help="Compare bytes without SHA256 (statuses only, faster).")
@click.option("--no-stats", is_flag=True, help="Skip numeric stats and the per-head view.")
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Hash cache folder (default $SURGEON_CACHE_DIR or $XDG_CACHE_HOME/surgeon/hashes).",
)
@click.option("--no-cache", is_flag=True, help="Neither read nor write the hash cache.")
@click.option("--workers", type=click.IntRange(1, 256), help="Threads for hashing (default: all cores).")
@click.option("-v", "--verbose", is_flag=True, help="List every differing tensor.")
@click.option(
    "-q",
    "--quiet",
    is_flag=True,
    help="Like diff -q: no report, only the exit status, and the one summary line when they differ "
    "(nothing when identical). Skips the numeric stats; no progress bar.",
)
@click.option("--no-progress", is_flag=True, help="No progress bar (it goes to stderr, on a terminal only).")
@output_option
@force_option
@handle_errors
def diff(base, other, base_revision, other_revision, no_hash, no_stats, cache_dir, no_cache, **kw) -> None:
    """Compare two checkpoints tensor by tensor.

    BASE and OTHER are checkpoint folders, .safetensors files or Hub repo ids (from the local
    Hugging Face cache; --download fetches one that is not there, unless the Hub's LFS SHA256s
    show every file identical to the other side's: then it says so and downloads no weights).
    Exit status: 0 identical, 1 different, 2 trouble.

    OTHER may be a quant of BASE: a .gguf file, the first part of a split set, a folder of
    them, a quantized safetensors folder (NVFP4, FP8: its config declares the quantization),
    or a Hub id of either (owner/repo:Q4_K_M picks one GGUF of several). Each tensor is
    dequantized and held to the measured quantization error of its type. Exit status: 0 every
    tensor within its bound, 1 any not (or not compared), 2 trouble.
    """
    fmt = _chosen_format(kw)
    _check_quiet(kw, fmt)
    one_blas_thread()
    from surgeon.format.kinds import names_gguf  # reads no file, imports no format library

    if names_gguf(base) or names_gguf(other):
        _diff_quant(base, other, base_revision, other_revision, no_stats, fmt, kw)
    if "/" in other and not Path(other).expanduser().exists():  # a Hub id: a GGUF repo takes the quant route
        from surgeon.format.hub_gguf import hub_gguf

        found = hub_gguf(other, other_revision)
        if found is not None:
            _diff_hub_gguf(base, other, found, base_revision, no_stats, fmt, kw)
    from surgeon.diff.engine import DiffOptions, diff_checkpoints  # deferred: see the module docstring
    from surgeon.format.hashcache import hash_cache_dir, refusal
    from surgeon.format.hub_pair import HubMatch, open_pair

    progress = progress_for(kw["quiet"] or kw["no_progress"])
    refused = None if no_cache or kw["quiet"] else refusal(cache_dir or hash_cache_dir())
    if refused:  # the cache is neither read nor written: the shards are hashed from their bytes
        warn(refused)
    # --download: a Hub side is compared by hashes and headers (one line on stderr), then fetched,
    # unless every file is the same already (then that is the answer, exit 0); --markdown's
    # evidence is hashed from both sides' bytes, so it downloads all the same
    opened = open_pair(
        base,
        other,
        base_revision,
        other_revision,
        download=kw["download"],
        cache_dir=None if no_cache else (cache_dir or hash_cache_dir()),
        say=None if kw["quiet"] else lambda line: click.echo(inert(line), err=True),  # names from the Hub
        progress=progress,
        skip_identical=not fmt.evidence,
        bars=not isinstance(progress, NoProgress),  # huggingface_hub's bars, on when surgeon's are
    )
    if isinstance(opened, HubMatch):
        _hub_match(opened, fmt, kw)
    base_ckpt, other_ckpt = opened
    check_output(kw["output"], kw["force"], [base_ckpt, other_ckpt])
    if _is_quant_of(base_ckpt, other_ckpt):  # NVFP4 or FP8 safetensors: held to its bounds
        _check_no_stats(no_stats)
        _run_quant(base_ckpt, other_ckpt, fmt, kw)
    options = DiffOptions(
        hash=not no_hash,
        cache_dir=None if no_cache else (cache_dir or hash_cache_dir()),
        stats=not (no_stats or kw["quiet"]),  # the summary line needs no stats
        workers=kw["workers"],
        trust_cache=not fmt.evidence,  # a card's SHA256s are hashed from the bytes (formats.py)
        trust_blob_names=not fmt.evidence,
    )
    report = diff_checkpoints(base_ckpt, other_ckpt, options, progress=progress, cancel=threading.Event())
    if kw["quiet"]:
        from surgeon.diff.report import summary_line

        emit("" if report.identical else inert(summary_line(report)) + "\n", None, False)
    else:
        emit(_render_diff(report, fmt, kw["verbose"], kw["output"]), kw["output"], kw["force"])
    sys.exit(EXIT_SAME if report.identical else EXIT_DIFFERENT)


def _diff_quant(base, other, base_revision, other_revision, no_stats, fmt: DiffFormat, kw: dict) -> NoReturn:
    """BASE against a GGUF quant of it (diff/quant.py): exit 0 when every tensor is within its
    type's measured bound, 1 when any is not (beyond it, unverified, missing, of another
    shape), 2 for trouble. gguf-py is imported here only, when a GGUF is named."""
    from surgeon.format.kinds import gguf_inputs, names_gguf

    if names_gguf(base):
        raise SurgeonError(f"{base}: a GGUF as BASE; name the safetensors checkpoint first: surgeon diff BASE QUANT")
    if other_revision is not None:
        raise SurgeonError(f"--other-revision: {other} is a GGUF file, not a Hub id")
    _check_no_stats(no_stats)
    base_ckpt = _float_base(base, base_revision, kw)
    _check_not_over(kw, gguf_inputs(other))
    _run_quant(base_ckpt, other, fmt, kw)


def _diff_hub_gguf(base, other, found: Path, base_revision, no_stats, fmt: DiffFormat, kw: dict) -> NoReturn:
    """BASE against a GGUF of a Hub repo in the local cache (`owner/repo[:TAG]`: hub_gguf.py)."""
    from surgeon.format.kinds import gguf_inputs

    _check_no_stats(no_stats)
    base_ckpt = _float_base(base, base_revision, kw)
    _check_not_over(kw, gguf_inputs(found))
    _run_quant(base_ckpt, str(found), fmt, kw, source=other)


def _check_no_stats(no_stats: bool) -> None:
    if no_stats:
        raise SurgeonError("--no-stats: a quant is compared by its statistics (NMSE per tensor); drop the option")


def _check_not_over(kw: dict, inputs: list[Path]) -> None:
    from surgeon.atomic import check_output as check_not_over

    if kw["output"] is not None:
        check_not_over(kw["output"], inputs, kw["force"])


def _float_base(base, base_revision, kw: dict):
    from surgeon.format.checkpoint import open_checkpoint

    base_ckpt = open_checkpoint(base, base_revision, download=kw["download"])
    check_output(kw["output"], kw["force"], [base_ckpt])
    _is_quant_of(base_ckpt, None)
    return base_ckpt


def _is_quant_of(base_ckpt, other_ckpt) -> bool:
    """OTHER declares a quantization BASE does not: the quant route. BASE quantized against a
    float OTHER is the sides swapped (two quants of each other compare byte for byte)."""
    from surgeon.format.quant_scheme import decoded_scheme

    base_scheme = decoded_scheme(base_ckpt)
    other_scheme = decoded_scheme(other_ckpt) if other_ckpt is not None else None
    if base_scheme is not None and other_scheme is None:
        said = f"{base_scheme.method} {'+'.join(sorted(x.upper() for x in base_scheme.layouts))}"
        raise SurgeonError(
            f"{base_ckpt.source}: a quantized checkpoint ({said}) as BASE; "
            "name the float checkpoint first: surgeon diff BASE QUANT"
        )
    return other_scheme is not None and base_scheme is None


def _run_quant(base_ckpt, quant, fmt: DiffFormat, kw: dict, source: str | None = None) -> NoReturn:
    from surgeon.diff.quant import QuantOptions, diff_quant

    options = QuantOptions(workers=kw["workers"], hash_files=fmt.evidence)  # a card's SHA256s, from the bytes
    progress = progress_for(kw["quiet"] or kw["no_progress"])
    report = diff_quant(base_ckpt, quant, options, source=source, progress=progress, cancel=threading.Event())
    if kw["quiet"]:
        from surgeon.diff.quant_report import summary_line

        emit("" if report.made_from else inert(summary_line(report)) + "\n", None, False)
    else:
        rendered = fmt.render_quant(report, RenderOptions(verbose=kw["verbose"]))
        text = rendered if isinstance(rendered, str) else render_rich(rendered, kw["output"])
        emit(text, kw["output"], kw["force"])
    sys.exit(EXIT_SAME if report.made_from else EXIT_DIFFERENT)


def _hub_match(match: HubMatch, fmt: DiffFormat, kw: dict) -> NoReturn:
    """The Hub side is identical to the local one by the Hub's LFS SHA256 and bytes fetched
    (hub.py), the weights not downloaded: one line saying so (-q: none), or its JSON."""
    check_output(kw["output"], kw["force"], [match.local])
    if fmt.name == "json":  # its own schema, surgeon.diff-hub-match/1 (a card always downloads)
        emit(json.dumps(match.to_json(), indent=2) + "\n", kw["output"], kw["force"])
    elif not kw["quiet"]:
        emit(inert(match.summary()) + "\n", kw["output"], kw["force"])
    sys.exit(EXIT_SAME)


def _chosen_format(kw: dict) -> DiffFormat:
    chosen = [FORMATS[name] for name in FORMATS if kw.pop(f"format_{name}", False)]
    if len(chosen) > 1:
        flags = " and ".join(f"--{f.name}" for f in chosen)
        raise SurgeonError(f"{flags} are exclusive: pick one")
    return chosen[0] if chosen else TERMINAL


def _check_quiet(kw: dict, fmt: DiffFormat) -> None:
    """-q prints no report, so an option that shapes one contradicts it (git diff --quiet
    would drop it silently; an error says the report the user asked for is not coming)."""
    if not kw["quiet"]:
        return
    asked = [] if fmt is TERMINAL else [f"--{fmt.name}"]
    asked += ["--verbose"] if kw["verbose"] else []
    asked += ["--output"] if kw["output"] is not None else []
    if asked:
        raise SurgeonError(f"--quiet prints no report, so {asked[0]} has nothing to show: drop one of them")


def _render_diff(report, fmt: DiffFormat, verbose: bool, output) -> str:
    sections: list[str] = []
    if fmt.card:
        # deferred: quality.render brings rich's tables (40 ms measured), for a card only
        from surgeon.quality.render import recorded_quality_section

        sections = recorded_quality_section(report)
    rendered = fmt.render(report, RenderOptions(verbose=verbose, sections=sections))
    return rendered if isinstance(rendered, str) else render_rich(rendered, output)


@click.command()
@click.argument("checkpoint")
@click.option("--revision", help="Hub revision of CHECKPOINT (branch, tag or commit).")
@download_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON (schema surgeon.inspect/1).")
@click.option("-v", "--verbose", is_flag=True, help="List every tensor.")
@output_option
@force_option
@handle_errors
def inspect(checkpoint, revision, download, as_json, verbose, output, force) -> None:
    """List a checkpoint's tensors, shards, metadata and parameter counts from its headers."""
    one_blas_thread()
    from surgeon.diff.inspection import inspect_json  # deferred: see the module docstring
    from surgeon.format.checkpoint import open_checkpoint

    ckpt = open_checkpoint(checkpoint, revision, download=download)
    check_output(output, force, [ckpt])
    data = inspect_json(ckpt)
    if as_json:
        emit(json.dumps(data, indent=2) + "\n", output, force)
        return
    from surgeon.diff.render_inspection import render_inspect

    emit(render_rich(functools.partial(render_inspect, data, verbose=verbose), output), output, force)
