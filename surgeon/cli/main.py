"""The `surgeon` command group. Each command is a module-level click command in its own
module of surgeon.cli, imported only when it runs (or for --help), so `surgeon diff` never
pays for, nor needs, the packages that prune and the TUI use (torch, textual)."""

from __future__ import annotations

import importlib
import sys

import click

from surgeon import DISTRIBUTION
from surgeon.text import inert

# name -> (module, attribute): the one list of commands, in the order --help shows them.
COMMANDS = {
    "diff": ("surgeon.cli.diff", "diff"),
    "inspect": ("surgeon.cli.diff", "inspect"),
    "origin": ("surgeon.cli.origin", "origin"),
    "prune": ("surgeon.cli.prune", "prune"),
    "reshape": ("surgeon.cli.reshape", "reshape"),
    "canary": ("surgeon.cli.recover", "canary"),
    "eval": ("surgeon.cli.evaluate", "eval_command"),
    "salvage": ("surgeon.cli.recover", "salvage"),
    "verify": ("surgeon.cli.recover", "verify"),
    "demo": ("surgeon.cli.demo", "demo"),
    "tui": ("surgeon.cli.tui", "tui"),
}

# Each command's first docstring line, for `surgeon --help`: listing the commands from here
# instead of importing their modules keeps numpy, rich's tables and the engines' options out
# of it (`surgeon --help` in benchmarks/bench_startup.py, shared 2-core box: 0.24-0.37 s
# before, 0.06-0.07 s after). tests/cli/test_startup.py checks these are the commands' own lines.
SUMMARIES = {
    "diff": "Compare two checkpoints tensor by tensor.",
    "inspect": "List a checkpoint's tensors, shards, metadata and parameter counts from its headers.",
    "origin": "Which of the CANDIDATE checkpoints the GGUF QUANT was made from.",
    "prune": "Remove attention heads from BASE (mask mode) and heal o_proj, one layer at a time.",
    "reshape": "Slice the heads and MLP channels a mask-mode prune zeroed out of MASKED's shapes, write OUT.",
    "canary": "Greedy generation checks of MODEL against BASE.",
    "eval": "Score MODEL against BASE on the same text, teacher-forced, one layer at a time.",
    "salvage": "Keep CANDIDATE's changes in some layers, roll the others back to BASE, write OUT.",
    "verify": "Check CHECKPOINT's files, its manifest's hashes, and its claims against the base.",
    "demo": "The whole story on the bundled tiny model: prune, canary, salvage, diff, verify.",
    "tui": "Interactive diff, rollback plan, canary, eval, prune and write over BASE and CANDIDATE.",
}


class LazyGroup(click.Group):
    """Commands load on first use (click's documented lazy-loading pattern). click's own
    errors (an unknown option, a path of the wrong kind) become one line naming the problem,
    exit 2, like every other bad input; `-h` names the usage."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attribute = COMMANDS[name]
        return getattr(importlib.import_module(module), attribute)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """click's own listing (Group.format_commands), from SUMMARIES instead of the commands:
        a bare click.Command with the same help shortens a line as the real one would."""
        limit = formatter.width - 6 - max(map(len, COMMANDS))
        rows = [(name, click.Command(name, help=SUMMARIES[name]).get_short_help_str(limit)) for name in COMMANDS]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def main(self, *args, **kwargs):
        kwargs["standalone_mode"] = False  # click's exceptions reach us instead of its 3-line usage block
        try:
            code = super().main(*args, **kwargs)
        except click.ClickException as exc:
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


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name=DISTRIBUTION, prog_name="surgeon")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors (give it before the command).")
def main(debug: bool) -> None:
    """Checkpoint surgery and diff toolkit for large language models."""


if __name__ == "__main__":
    main()
