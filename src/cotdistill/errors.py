"""The one exception type users see as a one-line message (the CLI exits 2 on it)."""


class CotdistillError(Exception):
    """Bad input or configuration: the message names the file, line or field at fault."""
