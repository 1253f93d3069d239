"""The one exception type the CLI turns into a one-line message and exit code 2."""

from surgeon import DISTRIBUTION


class SurgeonError(Exception):
    """Bad input or an environment problem the user can fix; never a bug in surgeon."""

    # The option that would fix it ("force", "tokenizer"). Engine messages name no flag, since
    # the TUI shows them too: the CLI adds "; pass --OPTION", the TUI its own hint.
    option: str | None = None


class TokenizerError(SurgeonError):
    """Another tokenizer would fix it."""

    option = "tokenizer"


def first_line(exc: BaseException) -> str:
    """An exception's first line, or its type's name when it says nothing: what a one-line
    error quotes of a library's multi-line message."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Cancelled(Exception):
    """Long work stopped because its cancellation event was set."""


# Which extra of pyproject.toml brings each optional import: the light install has none.
EXTRA_OF_MODULE = {
    "torch": "prune",
    "transformers": "prune",
    "accelerate": "prune",
    "bitsandbytes": "prune",
    "textual": "tui",
    "datasets": "datasets",
}


def missing_extra(exc: ImportError, what: str) -> SurgeonError | None:
    """A missing optional dependency as one line naming the extra to install, or None when
    the missing module is not one of surgeon's extras (a broken install: a real error)."""
    module = (getattr(exc, "name", None) or "").partition(".")[0]
    extra = EXTRA_OF_MODULE.get(module)
    if extra is None:
        return None
    cpu = " (CPU-only machines: torch from PyTorch's CPU index first, see the README)" if extra == "prune" else ""
    return SurgeonError(f"{what} needs {module}, which is not installed: pip install '{DISTRIBUTION}[{extra}]'{cpu}")
