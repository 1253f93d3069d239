"""The one exception type the CLI turns into a one-line message and exit code 2."""


class SurgeonError(Exception):
    """Bad input or an environment problem the user can fix; never a bug in surgeon."""

    # The option that would fix it ("force", "tokenizer"). Engine messages name no flag, since
    # the TUI shows them too: the CLI adds "; pass --OPTION", the TUI its own hint.
    option: str | None = None


class TokenizerError(SurgeonError):
    """Another tokenizer would fix it."""

    option = "tokenizer"


class Cancelled(Exception):
    """Long work stopped because its cancellation event was set."""
