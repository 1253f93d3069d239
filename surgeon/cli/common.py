"""What every command shares: one-line errors and exit codes, signals, progress bars, the
console, and writing a report to stdout or a file.

Every command module imports this one before it runs, `surgeon diff --help` included, so it
imports only click and surgeon's small modules: rich (the console 20 ms, rich.progress 30 ms
more), the output guard (surgeon.format.writer, which brings the checkpoint reader and numpy:
90 ms) and surgeon.atomic are imported where they are used: `surgeon diff --json` draws no
bar and writes no file. (-X importtime, cumulative, bytecode cached, the shared 2-core box
at load 3: `import surgeon.cli.common` 330-370 ms before, 25-35 ms after, click's 20 included.)
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

import click

from surgeon.errors import Cancelled, SurgeonError, missing_extra
from surgeon.progress import NoProgress, ProgressSink
from surgeon.text import inert

if TYPE_CHECKING:
    from rich.console import Console

EXIT_SAME, EXIT_DIFFERENT, EXIT_TROUBLE = 0, 1, 2
EXIT_CANARY_FAILED = 3
EXIT_OVER_BUDGET = 1  # salvage: written, but over its quality budget on the text held out from the search


class RichProgress:
    """A progress bar on stderr; only used when stderr is a terminal."""

    def __init__(self):
        self._progress = None
        self._task = None

    def start(self, description: str, total: int, unit: str = "bytes") -> None:
        if not total:
            return
        from rich import progress as rp  # deferred: 30 ms, for a bar on a terminal only

        if unit == "bytes":
            columns = [rp.DownloadColumn(), rp.TransferSpeedColumn(), rp.TimeRemainingColumn()]
        else:
            columns = [rp.MofNCompleteColumn(), rp.TextColumn(unit), rp.TimeElapsedColumn()]
        self._progress = rp.Progress(
            rp.TextColumn("{task.description}"),
            rp.BarColumn(),
            *columns,
            transient=True,
            console=console_for(stderr=True),
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


def console_for(stderr: bool = False, file=None) -> Console:
    from rich.console import Console  # deferred: 20 ms that --json, -q and --markdown never use

    piped = file is None and not stderr and not sys.stdout.isatty()
    return Console(stderr=stderr, file=file, highlight=False, soft_wrap=False, width=160 if piped else None)


def one_blas_thread() -> None:
    """For diff and inspect (torch-free), before numpy is first imported.

    Their numeric work runs one BLAS call per worker thread (diff/engine.py's threadpool
    limit), but OpenBLAS starts its own threads when numpy is imported, and they spin,
    taking a core from the compare's threads. bench_startup.py's pair, `diff --no-hash
    --json`, bytecode cached, 3 runs each: 0.46-0.48 s wall and 0.43-0.46 s user with them,
    0.43-0.45 s and 0.35-0.38 s without. A value the user set is kept; in a process that has
    numpy already (the TUI, tests) this changes nothing."""
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def progress_for(quiet: bool) -> ProgressSink:
    return NoProgress() if quiet or not sys.stderr.isatty() else RichProgress()


def say_plain(console: Console):
    """A `say` callback printing text as it is: folder and file names, never markup."""
    from rich.text import Text  # deferred with rich.console (see console_for)

    return lambda text: console.print(Text(inert(text)))


def warn(message: str) -> None:
    click.echo(f"surgeon: warning: {inert(message)}", err=True)


def warn_skipped(manifest: dict) -> None:
    """One warning for each of the base's side files the writer left out, and why."""
    for name, why in manifest["written"].get("skipped_files", {}).items():
        warn(f"{name} of the base was not copied: {why}")


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
    """Errors become one line on stderr and exit code 2; `surgeon --debug` shows the traceback.
    Ctrl-C exits 130, SIGTERM 143 and SIGHUP 129 (128 + the signal), after cleaning up."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context()
        debug = bool(ctx.find_root().params.get("debug"))
        try:
            with _signals_interrupt():
                return func(*args, **kwargs)
        except Terminated as exc:
            click.echo("surgeon: terminated", err=True)
            sys.exit(128 + exc.args[0])
        except SurgeonError as exc:
            _fail(str(exc) + _hint(ctx.command, exc.option), debug)
        except (Cancelled, KeyboardInterrupt):
            click.echo("surgeon: interrupted", err=True)
            sys.exit(130)
        except BrokenPipeError:
            os._exit(EXIT_TROUBLE)  # the reader went away; nothing useful left to say
        except ImportError as exc:
            _fail(str(missing_extra(exc, ctx.command_path) or _internal(exc)), debug)
        except Exception as exc:
            # deferred: surgeon.atomic (ctypes, shutil; 4-10 ms) is needed here only on a failure
            from surgeon.atomic import ENVIRONMENT_ERRNOS, describe_os_error

            if isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS:  # a write no engine mapped
                _fail(describe_os_error(exc, kwargs.get("output") or kwargs.get("folder")), debug)
            _fail(_internal(exc), debug)

    return wrapper


def _internal(exc: BaseException) -> str:
    return f"internal error: {type(exc).__name__}: {exc} (rerun with surgeon --debug)"


def _fail(message: str, debug: bool) -> None:
    if debug:
        traceback.print_exc()
    click.echo(f"surgeon: error: {inert(message)}", err=True)  # messages quote names from files
    sys.exit(EXIT_TROUBLE)


def check_output(output: Path | None, force: bool, inputs: list) -> None:
    """The writers' own guard (surgeon.format.writer.check_output_path), before any work starts."""
    if output is not None:
        # deferred: the writer brings the checkpoint reader and numpy (90 ms), which a
        # command's --help and a report on stdout never need
        from surgeon.format.writer import check_output_path

        check_output_path(output, inputs, force)


def emit(text: str, output: Path | None, force: bool) -> None:
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    from surgeon.atomic import write_output_text  # deferred: only a report written to a file needs it

    write_output_text(output, text, force)  # created exclusively: a concurrent writer loses


def render_rich(draw, output) -> str:
    """Draw straight to the terminal, or record plain text for a file or pipe."""
    if output is None and sys.stdout.isatty():
        draw(console_for())
        return ""
    buffer = io.StringIO()
    console = console_for(file=buffer)
    console.width = max(console.width, 160)
    draw(console)
    return buffer.getvalue()


def _hint(command: click.Command, option: str | None) -> str:
    """ "; pass --OPTION" where this command has that option: `surgeon tui` on a Hub id that
    is not cached has no --download to pass."""
    if option and any(f"--{option}" in param.opts for param in command.params if isinstance(param, click.Option)):
        return f"; pass --{option}"
    return ""


output_option = click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the report to FILE (atomically) instead of stdout.",
)
force_option = click.option("--force", is_flag=True, help="Replace an existing --output file.")
# A Hub id comes from the local Hugging Face cache; fetching one (maybe many GB) is asked for.
download_option = click.option(
    "--download",
    is_flag=True,
    help="Fetch a Hub id that is not in the local Hugging Face cache: its headers and file hashes, "
    "then its safetensors, index, config and tokenizer files.",
)
