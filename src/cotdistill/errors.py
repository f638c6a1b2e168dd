"""The one exception type users see as a one-line message (the CLI exits with its code)."""


class CotdistillError(Exception):
    """Bad input or configuration: the message names the file, line or field at fault.
    Environment failures (EnvironmentProblem) exit 1."""

    exit_code = 2


class EnvironmentProblem(CotdistillError):
    """The machine, a server or a service could not do the job (not the user's input):
    exit code 1. Nothing it failed on is stored as a result."""

    exit_code = 1


def at_least(name: str, value: float | None, low: float, *, strictly: bool = False) -> None:
    """Refuse a numeric setting below its range in one line naming it (None: not set).
    Checked where the Python functions start, so the CLI, recipes and the API share it."""
    if value is not None and (value <= low if strictly else value < low):
        raise CotdistillError(f"{name} must be {'>' if strictly else '>='} {low:g}, not {value:g}")


def check_generation_options(samples: int, max_new_tokens: int, batch_size: int, limit: int | None,
                             temperature: float) -> None:
    """The ranges of the options annotate and eval share."""
    for option, value, low in (("--samples", samples, 1), ("--max-new-tokens", max_new_tokens, 1),
                               ("--batch-size", batch_size, 1), ("--limit", limit, 1), ("--temperature", temperature, 0)):
        at_least(option, value, low)
