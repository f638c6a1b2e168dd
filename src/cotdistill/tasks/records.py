"""Read local JSONL / JSON / CSV files into (location, record) pairs.

Every record carries its location ("file:line") so that any later complaint about a field
can name exactly where the user has to look.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cotdistill.errors import CotdistillError

Record = dict[str, Any]


def read_records(path: str | Path) -> Iterator[tuple[str, Record]]:
    path = Path(path)
    if not path.is_file():
        raise CotdistillError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _read_jsonl(path)
    elif suffix == ".json":
        yield from _read_json(path)
    elif suffix in (".csv", ".tsv"):
        yield from _read_csv(path, delimiter="\t" if suffix == ".tsv" else ",")
    else:
        raise CotdistillError(f"{path}: unknown file type {suffix!r} (use .jsonl, .json, .csv or .tsv)")


def _read_jsonl(path: Path) -> Iterator[tuple[str, Record]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise CotdistillError(f"{path}:{number}: malformed JSON ({error.msg} at column {error.colno})") from None
            if not isinstance(record, dict):
                raise CotdistillError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            yield f"{path}:{number}", record


def _read_json(path: Path) -> Iterator[tuple[str, Record]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise CotdistillError(f"{path}:{error.lineno}: malformed JSON ({error.msg})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise CotdistillError(f"{path}: expected a JSON list of objects (or {{\"data\": [...]}})")
    for index, record in enumerate(data):
        if not isinstance(record, dict):
            raise CotdistillError(f"{path}: item {index}: expected a JSON object, got {type(record).__name__}")
        yield f"{path}: item {index}", record


def _read_csv(path: Path, delimiter: str) -> Iterator[tuple[str, Record]]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        for record in reader:
            yield f"{path}:{reader.line_num}", record
