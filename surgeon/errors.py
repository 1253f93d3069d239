"""The one exception type the CLI turns into a one-line message and exit code 2."""


class SurgeonError(Exception):
    """Bad input or an environment problem the user can fix; never a bug in surgeon."""


class Cancelled(Exception):
    """Long work stopped because its cancellation event was set."""
