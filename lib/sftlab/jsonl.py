"""Append-only JSONL: the one row store of every stage (generations, judgments).

One JSON object per line, UTF-8, lines separated by `\\n` and only by `\\n`. The rules:

- **Append**: rows are written, flushed and fsynced by `Appender.append` / `append_rows`, so a row
  that was reported written survives a kill or a power loss.
- **Torn last line**: a kill in the middle of a write leaves a last line without its `\\n`. Readers
  ignore it (that row is simply not there yet); the next appender cuts it off before writing, so the
  next row starts on a clean line. Nothing else is ever removed from a file.
- **Bad middle line**: a complete line (one that ends with `\\n`) that is not a JSON object is an
  error, `RowsError`, naming the file and line: it was not written by sftlab, and guessing would
  lose or invent data.

Lines are split on `\\n` only, never with `str.splitlines()`: a model's answer may hold U+2028,
U+2029, U+0085 or other characters that `splitlines` treats as line ends. `json.dumps` escapes
`\\n` itself, NUL and every other control character; a lone surrogate (which UTF-8 cannot encode)
is written as its `\\udXXX` escape and comes back as the same string.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterable, Iterator

from pydantic import BaseModel, ValidationError

from sftlab.errors import SftlabError


log = logging.getLogger("sftlab.jsonl")
_SURROGATE = re.compile("[\ud800-\udfff]")  # in a str every surrogate is lone: json.loads joins pairs


class RowsError(SftlabError, ValueError):
    """A JSONL file with a line that is not a JSON object; the message names the file and line."""


def dumps(row: dict[str, Any]) -> bytes:
    """One row as one line of UTF-8 bytes, `\\n` included. Readable text (Korean stays Korean), except
    for rows holding lone surrogates, which are written with ASCII escapes so that they survive."""
    try:
        return (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        return (json.dumps(row, ensure_ascii=True) + "\n").encode("ascii")


def utf8_safe(value: Any) -> Any:
    """`value` with every lone surrogate in its strings replaced by U+FFFD, for consumers that need
    valid UTF-8 (pandas' Arrow-backed strings, Parquet). The rows on disk keep the text as it was."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {utf8_safe(k): utf8_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [utf8_safe(v) for v in value]
    return value


def iter_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) for every complete line of `path`; nothing if the file does not exist.

    Raises `RowsError` for a complete line that is not a JSON object. Blank lines are skipped.
    """
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return
    lines = raw.split(b"\n")[:-1]  # the part after the last \n is a torn write, or empty
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            reason = e.msg if isinstance(e, json.JSONDecodeError) else "not UTF-8"
            raise RowsError(f"{path}:{number}: not a JSON row ({reason})") from None
        if not isinstance(row, dict):
            raise RowsError(f"{path}:{number}: not a JSON row (expected an object, got {type(row).__name__})")
        yield number, row


def read_models(path: Path, model: type[BaseModel]) -> tuple[list[tuple[int, Any]], list[str]]:
    """(line number, row validated as `model`) for every row of `path` that validates, and for each one that
    does not, a problem "path:line: field 'x' ..." (the caller decides whether one problem is fatal).
    Raises `RowsError` for a line that is not a JSON object."""
    rows, problems = [], []
    for number, raw in iter_rows(path):
        try:
            rows.append((number, model.model_validate(raw)))
        except ValidationError as e:
            problems.append(f"{path}:{number}: {describe(e)}")
    return rows, problems


def describe(error: ValidationError) -> str:
    """The first problem of a row that does not validate, naming its field."""
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "row"
    if first["type"] == "missing":
        return f"field '{field}' is missing"
    return f"field '{field}': {first['msg']}, got {first.get('input')!r:.60}"


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Every row of `path` (see `iter_rows`)."""
    return [row for _, row in iter_rows(path)]


def cut_torn_tail(path: Path) -> bool:
    """Cut a last line without its `\\n` (a write a kill interrupted) off `path`; True if one was cut."""
    path = Path(path)
    if not path.exists():
        return False
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return False
        # Read back from the end until a newline: the torn tail is at most one row long.
        block, position, tail = 65536, size, b""
        while position > 0:
            start = max(0, position - block)
            f.seek(start)
            tail = f.read(position - start) + tail
            position = start
            if b"\n" in tail:
                break
        keep = position + tail.rfind(b"\n") + 1 if b"\n" in tail else 0
        if keep == size:
            return False
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    return True


class Appender:
    """Appends rows to JSONL files, each row flushed and fsynced before `append` returns.

        with Appender() as out:
            out.append(path, row)

    Before the first write to a file, a torn last line is cut off (see the module docstring).
    """

    def __init__(self) -> None:
        self._files: dict[Path, Any] = {}

    def __enter__(self) -> "Appender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def append(self, path: Path, row: dict[str, Any]) -> None:
        self.extend(path, [row])

    def extend(self, path: Path, rows: Iterable[dict[str, Any]]) -> None:
        """Several rows in one write, then one flush and fsync."""
        path = Path(path)
        f = self._files.get(path)
        if f is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            if cut_torn_tail(path):
                log.warning("%s: cut off its torn last line (a write a kill interrupted): that row was never "
                            "complete, so it is made again", path)
            f = self._files[path] = open(path, "ab")
        f.write(b"".join(dumps(row) for row in rows))
        f.flush()
        os.fsync(f.fileno())


def append_rows(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Append `rows` to `path` in one write (flushed and fsynced)."""
    with Appender() as out:
        out.extend(path, rows)
