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
    if value is not None and (value != value or (value <= low if strictly else value < low)):  # NaN too
        raise CotdistillError(f"{name} must be {'>' if strictly else '>='} {low:g}, not {value!r}")


SEED_RANGE = (0, 2**32 - 1)  # numpy's, which transformers' set_seed also seeds


def in_range(name: str, value: float | None, low: float, high: float, *, high_open: bool = False) -> None:
    """Refuse a numeric setting that is not finite or outside [low, high] (or [low, high)) in one
    line naming it (None: not set); NaN and infinity compare false with every bound, so they are
    named here rather than slipping through `at_least`."""
    import math

    if value is None:
        return
    if not math.isfinite(value) or value < low or (value >= high if high_open else value > high):
        bounds = ", ".join(str(int(b)) if float(b).is_integer() else f"{b:g}" for b in (low, high))
        raise CotdistillError(f"{name} must be in [{bounds}{')' if high_open else ']'}, not {value!r}")


def check_generation_options(samples: int, max_new_tokens: int, batch_size: int, limit: int | None,
                             temperature: float, seed: int = 0) -> None:
    """The ranges of the options annotate and eval share."""
    for option, value, low in (("--samples", samples, 1), ("--max-new-tokens", max_new_tokens, 1),
                               ("--batch-size", batch_size, 1), ("--limit", limit, 1), ("--temperature", temperature, 0)):
        at_least(option, value, low)
    in_range("--temperature", temperature, 0, 100)
    in_range("--seed", seed, *SEED_RANGE)
