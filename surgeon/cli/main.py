"""The `surgeon` command: parse options, call one engine function, render its result."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import sys
import threading
from pathlib import Path

import click

from surgeon.errors import Cancelled, SurgeonError

EXIT_SAME, EXIT_DIFFERENT, EXIT_TROUBLE = 0, 1, 2


class RichProgress:
    """A progress bar on stderr; only used when stderr is a terminal."""

    def __init__(self):
        self._progress = None
        self._task = None

    def start(self, description: str, total: int, unit: str = "bytes") -> None:
        from rich import progress as rp

        if not total:
            return
        if unit == "bytes":
            columns = [rp.DownloadColumn(), rp.TransferSpeedColumn(), rp.TimeRemainingColumn()]
        else:
            columns = [rp.MofNCompleteColumn(), rp.TextColumn(unit), rp.TimeElapsedColumn()]
        self._progress = rp.Progress(
            rp.TextColumn("{task.description}"),
            rp.BarColumn(),
            *columns,
            transient=True,
            console=_console(stderr=True),
        )
        self._progress.start()
        self._task = self._progress.add_task(description, total=total)

    def advance(self, amount: int) -> None:
        if self._task is not None:
            self._progress.advance(self._task, amount)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = self._task = None


def _console(stderr: bool = False, file=None):
    from rich.console import Console

    piped = file is None and not stderr and not sys.stdout.isatty()
    return Console(stderr=stderr, file=file, highlight=False, soft_wrap=False, width=160 if piped else None)


def _progress(quiet: bool):
    from surgeon.progress import NoProgress

    return NoProgress() if quiet or not sys.stderr.isatty() else RichProgress()


class Terminated(KeyboardInterrupt):
    """SIGTERM (what timeout, docker and Slurm send) or SIGHUP, raised in the main thread so
    that a run cleans up exactly as it does on Ctrl-C: thread-pool workers stop at their next
    chunk, temporary outputs are deleted."""


def _on_signal(signum, _frame) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def _signals_interrupt():
    """SIGTERM and SIGHUP raise Terminated while a command runs (not where they are ignored,
    as under nohup); the previous handlers come back after, for callers that embed the CLI."""
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for number in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(number) == signal.SIG_DFL:
                previous[number] = signal.signal(number, _on_signal)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def handle_errors(func):
    """Errors become one line on stderr and exit code 2; --debug shows the traceback.
    Ctrl-C exits 130, SIGTERM 143 and SIGHUP 129 (128 + the signal), after cleaning up."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        debug = kwargs.get("debug", False)
        try:
            with _signals_interrupt():
                return func(*args, **kwargs)
        except Terminated as exc:
            click.echo("surgeon: terminated", err=True)
            sys.exit(128 + exc.args[0])
        except SurgeonError as exc:
            _fail(str(exc) + (f"; pass --{exc.option}" if exc.option else ""), debug)
        except (Cancelled, KeyboardInterrupt):
            click.echo("surgeon: interrupted", err=True)
            sys.exit(130)
        except BrokenPipeError:
            os._exit(EXIT_TROUBLE)  # the reader went away; nothing useful left to say
        except Exception as exc:
            from surgeon.atomic import ENVIRONMENT_ERRNOS, describe_os_error

            if isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS:  # a write no engine mapped
                _fail(describe_os_error(exc, kwargs.get("output") or kwargs.get("folder")), debug)
            _fail(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug)", debug)

    return wrapper


def _fail(message: str, debug: bool) -> None:
    if debug:
        import traceback

        traceback.print_exc()
    from surgeon.text import inert

    click.echo(f"surgeon: error: {inert(message)}", err=True)  # messages quote names from files
    sys.exit(EXIT_TROUBLE)


def _check_output(output: Path | None, force: bool, inputs: list) -> None:
    """The writers' own guard (surgeon.format.writer.check_output_path), before any work starts."""
    if output is not None:
        from surgeon.format.writer import check_output_path

        check_output_path(output, inputs, force)


def _emit(text: str, output: Path | None, force: bool) -> None:
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    from surgeon.atomic import write_output_text

    write_output_text(output, text, force)  # created exclusively: a concurrent writer loses


debug_option = click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
output_option = click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the report to FILE (atomically) instead of stdout.",
)
force_option = click.option("--force", is_flag=True, help="Replace an existing --output file.")


class _OneLineErrors(click.Group):
    """click's own errors (an unknown option, a path of the wrong kind) as one line naming
    the problem, exit 2, like every other bad input; `-h` names the usage."""

    def main(self, *args, **kwargs):
        kwargs["standalone_mode"] = False  # click's exceptions reach us instead of its 3-line usage block
        try:
            code = super().main(*args, **kwargs)
        except click.ClickException as exc:
            from surgeon.text import inert

            if isinstance(exc, getattr(click.exceptions, "NoArgsIsHelpError", ())):  # bare `surgeon`: the help
                click.echo(exc.format_message(), err=True)
                sys.exit(exc.exit_code)

            hint = f" (see {exc.ctx.command_path} -h)" if isinstance(exc, click.UsageError) and exc.ctx else ""
            click.echo(f"surgeon: error: {inert(exc.format_message())}{hint}", err=True)
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:  # Ctrl-C at a prompt, outside any command
            click.echo("surgeon: interrupted", err=True)
            sys.exit(130)
        sys.exit(code or 0)


@click.group(cls=_OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="surgeon")
def main() -> None:
    """Checkpoint surgery and diff toolkit for large language models."""


@main.command()
@click.argument("base")
@click.argument("other")
@click.option("--base-revision", help="Hub revision of BASE (branch, tag or commit).")
@click.option("--other-revision", help="Hub revision of OTHER.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (schema surgeon.diff/1).")
@click.option("--markdown", is_flag=True, help="Print the model-card sections as Markdown.")
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
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@output_option
@force_option
@debug_option
@handle_errors
def diff(
    base,
    other,
    base_revision,
    other_revision,
    as_json,
    markdown,
    no_hash,
    no_stats,
    cache_dir,
    no_cache,
    workers,
    verbose,
    quiet,
    output,
    force,
    debug,
) -> None:
    """Compare two checkpoints tensor by tensor.

    BASE and OTHER are checkpoint folders, .safetensors files or Hub repo ids. Exit status:
    0 identical, 1 different, 2 trouble.
    """
    from surgeon.diff.engine import DiffOptions, diff_checkpoints
    from surgeon.format.checkpoint import open_checkpoint
    from surgeon.format.hashcache import default_cache_dir

    if as_json and markdown:
        raise SurgeonError("--json and --markdown are exclusive: pick one")
    base_ckpt = open_checkpoint(base, base_revision)
    other_ckpt = open_checkpoint(other, other_revision)
    _check_output(output, force, [base_ckpt, other_ckpt])
    options = DiffOptions(
        hash=not no_hash,
        cache_dir=None if no_cache else (cache_dir or default_cache_dir()),
        stats=not no_stats,
        workers=workers,
        # Markdown's SHA256s are evidence for a model card: hashed from the bytes, never taken
        # from the stat cache or a blob's name (both are trusted for speed only).
        trust_cache=not markdown,
        trust_blob_names=not markdown,
    )
    cancel = threading.Event()
    report = diff_checkpoints(base_ckpt, other_ckpt, options, _progress(quiet), cancel)
    _emit(_render_diff(report, as_json, markdown, verbose, output), output, force)
    sys.exit(EXIT_SAME if report.identical else EXIT_DIFFERENT)


def _render_diff(report, as_json: bool, markdown: bool, verbose: bool, output) -> str:
    if as_json:
        from surgeon.diff.report import to_json

        return json.dumps(to_json(report), indent=2) + "\n"
    if markdown:
        from surgeon.diff.render_markdown import render_markdown
        from surgeon.quality.record import recorded_quality

        return render_markdown(report, recorded_quality(report))
    return _render_rich(functools.partial(_render_terminal, report, verbose), output)


def _render_terminal(report, verbose, console) -> None:
    from surgeon.diff.render_terminal import render_terminal

    render_terminal(report, console, verbose)


def _render_rich(draw, output) -> str:
    """Draw straight to the terminal, or record plain text for a file or pipe."""
    import io

    if output is None and sys.stdout.isatty():
        draw(_console())
        return ""
    buffer = io.StringIO()
    console = _console(file=buffer)
    console.width = max(console.width, 160)
    draw(console)
    return buffer.getvalue()


@main.command()
@click.argument("checkpoint")
@click.option("--revision", help="Hub revision (branch, tag or commit).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (schema surgeon.inspect/1).")
@click.option("-v", "--verbose", is_flag=True, help="List every tensor.")
@output_option
@force_option
@debug_option
@handle_errors
def inspect(checkpoint, revision, as_json, verbose, output, force, debug) -> None:
    """List a checkpoint's tensors, shards, metadata and parameter counts from its headers."""
    from surgeon.diff.inspection import inspect_json
    from surgeon.format.checkpoint import open_checkpoint

    ckpt = open_checkpoint(checkpoint, revision)
    _check_output(output, force, [ckpt])
    data = inspect_json(ckpt)
    if as_json:
        _emit(json.dumps(data, indent=2) + "\n", output, force)
        return
    _emit(_render_rich(functools.partial(_render_inspect, data, verbose), output), output, force)


def _render_inspect(data: dict, verbose: bool, console) -> None:
    from surgeon.diff.render_inspection import render_inspect

    render_inspect(data, console, verbose)


@main.command()
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
@debug_option
@handle_errors
def tui(base, candidate, tokenizer, eval_text, debug) -> None:
    """Interactive diff, rollback plan, canary, eval, prune and write over BASE and CANDIDATE.

    With no arguments it opens the bundled demo pair: the tiny trained model and its
    all-layers prune, whose canary fails.
    """
    from surgeon.demo import DEMO_CANDIDATE, DEMO_MODEL, DEMO_TEXT
    from surgeon.format.checkpoint import open_checkpoint

    if (base is None) != (candidate is None):
        raise SurgeonError("give both BASE and CANDIDATE, or neither for the bundled demo pair")
    if base is None:  # the tiny model knows only its training text: English prose is noise to it
        base, candidate, eval_text = str(DEMO_MODEL), str(DEMO_CANDIDATE), eval_text or DEMO_TEXT
    roots = [open_checkpoint(path).root for path in (base, candidate)]  # bad input: one line, before the screen
    from surgeon.tui.app import SurgeonApp

    SurgeonApp(*roots, tokenizer=tokenizer, eval_text=eval_text).run()


def _register_commands() -> None:
    from surgeon.cli import evaluate as cli_eval
    from surgeon.cli import prune as cli_prune
    from surgeon.cli import recover as cli_recover

    cli_prune.register(main, handle_errors, _progress, _console, debug_option)
    cli_eval.register(main, handle_errors, _progress, _console, debug_option)
    cli_recover.register(main, handle_errors, _console, debug_option)


_register_commands()

if __name__ == "__main__":
    main()
