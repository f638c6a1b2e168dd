"""Read local JSONL / JSON / CSV / XML files into (location, record) pairs.

Every record carries its location ("file:line") so that any later complaint about a field
can name exactly where the user has to look.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from cotdistill.errors import CotdistillError

Record = dict[str, Any]


def read_text(path: Path) -> str:
    """A text file's content, or one line saying where it is not UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise _not_utf8(path, error) from None


def read_yaml(path: Path) -> Any:
    """A YAML file (recipe, prompts, task), or one line saying what is wrong with it."""
    try:
        return yaml.safe_load(read_text(path))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise CotdistillError(f"{path}{where}: malformed YAML ({getattr(error, 'problem', None) or error})") from None


def _not_utf8(path: Path, error: UnicodeDecodeError) -> CotdistillError:
    return CotdistillError(f"{path}: not UTF-8 text (byte {error.object[error.start]:#04x} at offset {error.start}): "
                           "save it as UTF-8")


def read_records(path: str | Path) -> Iterator[tuple[str, Record]]:
    path = Path(path)
    if not path.is_file():
        raise CotdistillError(f"{path}: no such file")
    try:
        yield from _records(path)
    except UnicodeDecodeError as error:
        raise _not_utf8(path, error) from None


def _records(path: Path) -> Iterator[tuple[str, Record]]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _read_jsonl(path)
    elif suffix == ".json":
        yield from _read_json(path)
    elif suffix in (".csv", ".tsv"):
        yield from _read_csv(path, delimiter="\t" if suffix == ".tsv" else ",")
    elif suffix == ".xml":
        yield from _read_xml(path)
    else:
        raise CotdistillError(f"{path}: unknown file type {suffix!r} (use .jsonl, .json, .csv, .tsv or .xml)")


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
        data = json.loads(read_text(path))
    except json.JSONDecodeError as error:
        if error.msg == "Extra data":  # JSON lines under a .json name (AQuA's dev.json)
            yield from _read_jsonl(path)
            return
        raise CotdistillError(f"{path}:{error.lineno}: malformed JSON ({error.msg})") from None
    for key in ("data", "examples"):  # {"examples": [...]} is BIG-bench's task format
        if isinstance(data, dict) and isinstance(data.get(key), list):
            data = data[key]
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


def _read_xml(path: Path) -> Iterator[tuple[str, Record]]:
    """Each element whose children are all text fields is a record: its attributes and
    its children's text by tag (ASDiv's `<Problem ID=...><Body>...</Body>...</Problem>`)."""
    from xml.etree import ElementTree

    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as error:
        raise CotdistillError(f"{path}:{error.position[0]}: malformed XML ({error.msg})") from None
    index = 0
    for element in root.iter():
        children = list(element)
        if children and all(len(child) == 0 for child in children):
            record: Record = dict(element.attrib)
            record.update({child.tag: (child.text or "").strip() for child in children})
            yield f"{path}: <{element.tag}> {record.get('ID', index)}", record
            index += 1
