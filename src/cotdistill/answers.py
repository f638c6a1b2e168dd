"""Answer extraction and equivalence, shared by every task and method.

Two extraction rules are reported side by side, as lm-evaluation-harness does for GSM8K:
`strict` reads only an explicit final-answer statement ("The answer is 42", "#### 42");
`flexible` takes the last answer-looking token anywhere in the text. Strict is the number
to compare methods by; flexible shows how much is lost to format alone.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Literal

AnswerKind = Literal["number", "yesno", "choice", "text"]

_NUMBER = r"-?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_STATEMENT = r"####|the (?:final )?answer is:?|answer:"
# The value runs to the end of the line or the next statement, whichever comes first.
_FINAL_STATEMENT = re.compile(rf"(?:{_STATEMENT})\s*((?:(?!{_STATEMENT})[^\n])*)", re.IGNORECASE)
_NUMBER_RE = re.compile(_NUMBER)
_YESNO_RE = re.compile(r"\b(yes|no|true|false)\b", re.IGNORECASE)
_CHOICE_RE = re.compile(r"\(?\b([A-E])\b\)?")


# Bounds on a number read from model output or a dataset: Fraction("1e999999999") builds a
# billion-digit integer (it hangs the caller, outside the sandbox's limits), and str() of an
# int past 4300 digits raises. No answer to a word problem is near these.
MAX_NUMBER_CHARS = 100
MAX_EXPONENT = 100
_EXPONENT = re.compile(r"e([+-]?\d+)$", re.IGNORECASE)


def _cleaned(text: str) -> str:
    return text.strip().replace(",", "").replace("$", "").replace(" ", "").rstrip(".%")


def out_of_bounds(text: str) -> str | None:
    """Why a number as written is too large to read (the rejected answer's reason), else None."""
    cleaned = _cleaned(text)
    if len(cleaned) > MAX_NUMBER_CHARS:
        return f"a number of {len(cleaned)} characters (at most {MAX_NUMBER_CHARS} are read)"
    exponent = _EXPONENT.search(cleaned)
    if exponent and abs(int(exponent.group(1))) > MAX_EXPONENT:
        return f"a number with exponent {exponent.group(1)} (at most {MAX_EXPONENT} either way)"
    return None


def parse_number(text: str) -> Fraction | None:
    """Read a number written the way people and models write them: 1,234 / $5 / 7.0 / -3 / 50%.
    None for anything else, including a number past the bounds above."""
    cleaned = _cleaned(text)
    if not cleaned or out_of_bounds(cleaned):
        return None
    try:
        return Fraction(cleaned)
    except (ValueError, ZeroDivisionError):
        return None


def _first(kind: AnswerKind, text: str) -> str | None:
    if kind == "number":
        match = _NUMBER_RE.search(text)
        return match.group(0) if match else None
    if kind == "yesno":
        match = _YESNO_RE.search(text)
        return match.group(1) if match else None
    if kind == "choice":
        match = _CHOICE_RE.search(text)
        return match.group(1) if match else None
    stripped = text.strip().rstrip(".")
    return stripped or None


def _last(kind: AnswerKind, text: str) -> str | None:
    pattern = {"number": _NUMBER_RE, "yesno": _YESNO_RE, "choice": _CHOICE_RE}.get(kind)
    if pattern is None:
        lines = [line for line in text.strip().splitlines() if line.strip()]
        return lines[-1].strip().rstrip(".") if lines else None
    matches = pattern.findall(text)
    return matches[-1] if matches else None


def extract_strict(text: str, kind: AnswerKind = "number") -> str | None:
    """The answer from the last explicit final-answer statement, or None if there is none."""
    statements = _FINAL_STATEMENT.findall(text)
    for value in reversed(statements):
        answer = _first(kind, value)
        if answer is not None:
            return answer
    return None


def extract_flexible(text: str, kind: AnswerKind = "number") -> str | None:
    """The last answer-looking token anywhere in the text (lm-eval's 'flexible-extract')."""
    return _last(kind, text)


def normalize(answer: str, kind: AnswerKind = "number") -> str:
    """A canonical string form, so equal answers compare equal and group in majority votes."""
    if kind == "number":
        value = parse_number(answer)
        if value is None:
            return answer.strip()
        return str(value.numerator) if value.denominator == 1 else str(float(value))
    if kind == "yesno":
        return {"true": "yes", "false": "no"}.get(answer.strip().lower(), answer.strip().lower())
    if kind == "choice":
        return answer.strip().strip("()").upper()
    return " ".join(answer.lower().split()).rstrip(".")


def is_correct(predicted: str | None, gold: str, kind: AnswerKind = "number") -> bool:
    """Numeric answers compare by value (1,000 == 1000.0 == $1000); others by canonical form."""
    if predicted is None:
        return False
    if kind == "number":
        left, right = parse_number(predicted), parse_number(gold)
        if left is None or right is None:
            return False
        return abs(left - right) <= Fraction(1, 10**6) * max(1, abs(right))
    return normalize(predicted, kind) == normalize(gold, kind)
