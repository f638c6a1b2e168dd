"""The one exception type users see as a one-line message (the CLI exits with its code)."""


class CotdistillError(Exception):
    """Bad input or configuration: the message names the file, line or field at fault.
    Subclasses for an environment that cannot do the job set exit_code 1."""

    exit_code = 2
