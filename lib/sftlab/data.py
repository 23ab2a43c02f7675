"""Chat fine-tuning data: read files, folders or hub datasets, validate every row, split train from test.

What it reads (`read_rows`):
    a local file, found with `paths.resolve` (the working directory first, then the project root):
        .jsonl     one JSON object a line; blank lines are skipped, locations keep the file's line numbers
        .json      a list of objects, {"data": [...]}, or JSON lines
        .jsonl.gz, .json.gz   the same, gzip-compressed
        .csv       a header, then one example a row; cells are read as text ("NA" stays "NA", "" is empty)
        .parquet
    a folder written by `datasets`' save_to_disk: a Dataset, or the split `split` of a DatasetDict;
    anything else that is not an existing path: a hub dataset id, `datasets.load_dataset(id, split=split)`.
    (A name ending in one of the extensions above that does not exist is reported as a missing file,
    not looked up on the hub: it is a typo far more often than a dataset id.)

A row is, the first that fits (`normalize`; column names from `ColumnMap`): a `messages` list of
{role, content}; a ShareGPT `conversations` list of {from, value}; question/answer (+ system, + input
appended after a blank line); TRL's prompt/completion (lists of messages, or strings); Alpaca's
instruction/input/output. Roles may be capitalised; content may be a list of text parts; a blank first
system message is dropped; assistant messages may carry tool_calls, followed by tool messages; a message's
`weight: 0` marks an assistant turn not to train (`Example.untrained`). Each row becomes an `Example`; its
other columns go to `meta`. docs/data.md has the full table.

`load_data` / `load_splits`: the training source, or a mixture (a list of {source, split, weight}: each
source cut to int(weight x rows) rows, seeded), and the test file or a seeded split; then test prompts
that are also training prompts (compared by content, `prompt_key`) are an error or, with
`data.overlap: drop`, removed from train and counted. Rows without an id get "<name>-<hash of the
source>-<row>", so files that share a name never share ids.

A location is "SOURCE:N", N being the line number for .jsonl (and JSON lines in a .json file), else the
1-based row number: the element of a JSON list, the data row of a CSV (the header not counted), the row
of a parquet file, a saved dataset or a hub split. A hub SOURCE (or a DatasetDict folder's) is written
"id[split]".

Raises `DataError` (a ValueError) for:
    - an existing file of an unsupported type, a missing file, a folder not written by save_to_disk, a split
      a DatasetDict lacks, a hub dataset that cannot be loaded, a .gz that does not decompress;
    - malformed JSON, or a JSON value that is not an object;
    - a row with a missing field, a non-string or empty content, a non-text content part, an unknown role,
      a malformed tool call, a weight other than 0 or 1, or roles out of order (an optional system message
      first, then user and assistant alternating, tool messages after an assistant's tool_calls, ending
      with assistant);
    - a duplicate id (within a source, or across a mixture's sources), an empty source, a mixture weight that
      takes no row, train and test sharing prompts (data.overlap: error), a split that leaves a side empty.
`load_examples` never drops a row: it collects every bad row and raises once, listing up to 20.
"""

from __future__ import annotations

import contextlib
import gc
import gzip
import hashlib
import json
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from sftlab import paths
from sftlab.errors import SftlabError
from sftlab.config import ColumnMap, DataParams, MixtureSource

SUPPORTED_EXTENSIONS = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".csv", ".parquet")
ROLES = ("system", "user", "assistant", "tool")
MAX_LISTED = 20  # enough to see the pattern of a broken file without drowning the notebook

Row = tuple[str, dict]  # (location, raw row)
Problem = tuple[int, str]  # (row number, 0 for the whole file; "location: what"): sorts into file order


class DataError(SftlabError, ValueError):
    """Data that cannot be used as given. `problems`: one "location: field: what" line per bad row."""

    def __init__(self, message: str, problems: Iterable[str] = ()):
        super().__init__(message)
        self.problems = tuple(problems)


@dataclass(frozen=True)
class Example:
    id: str
    # [{"role", "content"}, ...], ending with an assistant message. An assistant message may also carry
    # "tool_calls" ([{"type": "function", "function": {"name", "arguments": {...}}, "id"?}]); a "tool" message
    # (after an assistant message with tool_calls) may carry "name" and "tool_call_id". Nothing else is kept.
    messages: list[dict]
    source: str  # "path/to/file.jsonl:17"
    meta: dict = field(default_factory=dict)  # the row's other columns, JSON-safe
    untrained: tuple[int, ...] = ()  # indexes into messages of assistant turns not to train (weight: 0)

    @property
    def prompt(self) -> list[dict]:
        return self.messages[:-1]

    @property
    def reference(self) -> str:
        return self.messages[-1]["content"]

    @property
    def has_tools(self) -> bool:
        return any(m["role"] == "tool" or m.get("tool_calls") for m in self.messages)


# --------------------------------------------------------------------------------------------
# Reading raw rows
# --------------------------------------------------------------------------------------------


@dataclass
class _Read:
    label: str  # the source as messages name it: the path as given, or "id[split]"
    stem: str  # the base of ids made up for rows without an id column; unique to the source
    rows: list[Row]
    problems: list[Problem]  # rows that could not even be parsed


def read_rows(source: str, split: str = "train") -> list[Row]:
    """The raw rows of a file, a save_to_disk folder or a hub split, as (location, dict)."""
    read = _read(source, split)
    if read.problems:
        raise _bad_rows(read.label, read.problems)
    return read.rows


def _read(source: str, split: str) -> _Read:
    path = paths.resolve(source)
    name = path.name.lower()
    suffix = next((s for s in SUPPORTED_EXTENSIONS if name.endswith(s)), path.suffix.lower())
    label = str(source)
    if path.is_file():
        readers = {".jsonl": _read_jsonl, ".jsonl.gz": _read_jsonl, ".json": _read_json, ".json.gz": _read_json,
                   ".csv": _read_csv, ".parquet": _read_parquet}
        if suffix not in readers:
            raise DataError(f"{label}: unsupported file type '{suffix or '(none)'}'; "
                            f"supported: {', '.join(SUPPORTED_EXTENSIONS)}, a save_to_disk folder, or a hub dataset id")
        rows, problems = readers[suffix](path, label)
        return _Read(label, _stem(name[:-len(suffix)], _identity(path)), rows, problems)
    if path.is_dir():
        return _read_saved(path, label, split)
    if suffix in SUPPORTED_EXTENSIONS:
        raise DataError(f"{label}: file not found (looked for {path})")
    return _read_hub(source, split)


def _text(path: Path, label: str) -> str:
    if not path.name.lower().endswith(".gz"):
        return path.read_text(encoding="utf-8-sig")
    try:
        with gzip.open(path, "rt", encoding="utf-8-sig") as f:
            return f.read()
    except (OSError, EOFError) as e:  # not gzip, or cut short
        raise DataError(f"{label}: cannot decompress as gzip: {e}") from None


def _read_jsonl(path: Path, label: str) -> tuple[list[Row], list[Problem]]:
    return _json_lines(_text(path, label), label)


def _json_lines(text: str, label: str) -> tuple[list[Row], list[Problem]]:
    rows: list[Row] = []
    problems: list[Problem] = []
    # split("\n"), not splitlines(): JSON strings may hold a raw U+2028, which splitlines breaks on.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{label}:{number}"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append((number, f"{where}: malformed JSON: {e.msg} (column {e.colno})"))
            continue
        _add_object(rows, problems, number, where, value)
    return rows, problems


def _read_json(path: Path, label: str) -> tuple[list[Row], list[Problem]]:
    text = _text(path, label)
    if not text.strip():
        return [], []
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        if text.lstrip().startswith("{"):  # several objects, one a line: JSON lines under a .json name
            return _json_lines(text, label)
        return [], [(0, f"{label}:{e.lineno}: malformed JSON: {e.msg} (line {e.lineno}, column {e.colno})")]
    if isinstance(value, dict) and isinstance(value.get("data"), list):
        items = value["data"]
    elif isinstance(value, dict):
        items = [value]  # JSON lines with a single line
    elif isinstance(value, list):
        items = value
    else:
        return [], [(0, f"{label}: expected a list of objects, {{\"data\": [...]}} or JSON lines, got {_kind(value)}")]
    rows: list[Row] = []
    problems: list[Problem] = []
    for number, item in enumerate(items, start=1):
        _add_object(rows, problems, number, f"{label}:{number}", item)
    return rows, problems


def _add_object(rows: list[Row], problems: list[Problem], number: int, where: str, value: Any) -> None:
    if isinstance(value, dict):
        rows.append((where, value))
    else:
        problems.append((number, f"{where}: expected a JSON object (one row), got {_kind(value)}"))


def _read_csv(path: Path, label: str) -> tuple[list[Row], list[Problem]]:
    import pandas as pd

    try:
        # dtype=str and no NA parsing: an answer "NA" or "null" is text, an empty cell is "".
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        return [], []
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DataError(f"{label}: cannot parse as CSV: {e}") from None
    return [(f"{label}:{n}", row) for n, row in enumerate(frame.to_dict("records"), start=1)], []


def _read_parquet(path: Path, label: str) -> tuple[list[Row], list[Problem]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        # pyarrow straight to Python objects: pandas would hand back numpy arrays for list columns.
        records = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{label}: cannot read as parquet: {e}") from None
    return [(f"{label}:{n}", row) for n, row in enumerate(records, start=1)], []


def _read_saved(path: Path, label: str, split: str) -> _Read:
    """A folder written by `datasets`' save_to_disk: one Dataset, or a DatasetDict whose `split` is taken."""
    is_dict, is_dataset = (path / "dataset_dict.json").is_file(), (path / "state.json").is_file()
    if not (is_dict or is_dataset):
        raise DataError(f"{label}: is a folder but not one written by datasets' save_to_disk (no dataset_dict.json "
                        f"or state.json in it); expected a file ({', '.join(SUPPORTED_EXTENSIONS)}), such a "
                        "folder, or a hub id")
    import datasets  # slow import, only for these sources

    try:
        dataset = datasets.load_from_disk(str(path))
    except Exception as e:  # a damaged folder fails in many ways: all mean the same here
        raise DataError(f"{label}: cannot load with datasets.load_from_disk: {type(e).__name__}: {e}") from e
    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise DataError(f"{label}: has no split '{split}' (it has {', '.join(dataset) or 'none'}); "
                            "set data.train_split / data.test_split, or a mixture source's split")
        dataset, label = dataset[split], f"{label}[{split}]"
    identity = _identity(path) + (f"[{split}]" if is_dict else "")
    rows = [(f"{label}:{n}", row) for n, row in enumerate(dataset.to_list(), start=1)]
    return _Read(label, _stem(path.name + (f"-{split}" if is_dict else ""), identity), rows, [])


def _read_hub(source: str, split: str) -> _Read:
    import datasets  # slow import, only for hub sources

    label = f"{source}[{split}]"
    try:
        dataset = datasets.load_dataset(source, split=split)
    except Exception as e:  # load_dataset fails in many ways (network, auth, unknown split): all mean the same here
        raise DataError(f"{label}: not a local file, so it was loaded as hub dataset '{source}' split '{split}', "
                        f"which failed (the hub may be unreachable offline; a local path needs one of "
                        f"{', '.join(SUPPORTED_EXTENSIONS)}): {type(e).__name__}: {e}") from e
    rows = [(f"{label}:{n}", dict(row)) for n, row in enumerate(dataset, start=1)]
    # The split is part of made-up ids, so id-less train and test splits of one dataset stay disjoint.
    return _Read(label, _stem(f"{source.rstrip('/').split('/')[-1]}-{split}", label), rows, [])


def _identity(path: Path) -> str:
    """What names a local source in its made-up ids: its path from the project root (so ids stay the same
    when the checkout moves), or its absolute path outside the root."""
    path = path.resolve()
    try:
        return path.relative_to(paths.project_root()).as_posix()
    except ValueError:
        return path.as_posix()


def _stem(name: str, identity: str) -> str:
    """The base of made-up ids: the readable name plus a short hash of the source, so two files of the same
    name in different folders (a/data.jsonl, b/data.jsonl) never make up the same id."""
    return f"{name}-{hashlib.sha1(identity.encode('utf-8')).hexdigest()[:6]}"


# --------------------------------------------------------------------------------------------
# Validating one row
# --------------------------------------------------------------------------------------------


def normalize(location: str, row: dict, columns: ColumnMap, system_prompt: str | None = None,
              fallback_id: str | None = None) -> Example:
    """One raw row -> an Example, or a DataError naming `location` and every bad field of the row.

    The row's form is the first that fits: a `messages` list; a ShareGPT `conversations` list; question/answer
    columns (+ input); TRL's prompt/completion; Alpaca's instruction/output (+ input). `fallback_id` is the
    id of a row without an id column (default: "<file stem>-<hash of the file>-<row number>").
    """
    problems: list[str] = []

    def bad(name: str, what: str) -> None:
        problems.append(f"{name}: {what}")

    form = _form(row, columns)
    messages: list[_Message] | None = None
    if form == "messages":
        messages = _messages(row[columns.messages], columns.messages, bad)
    elif form == "sharegpt":
        messages = _sharegpt(row, columns, bad)
    elif form == "question/answer":
        messages = _single_turn(row, columns.question, columns.answer, columns, bad)
    elif form == "prompt/completion":
        messages = _prompt_completion(row, bad)
    elif form == "alpaca":
        messages = _single_turn(row, "instruction", "output", columns, bad)
    else:
        found = ", ".join(map(str, row)) or "(none)"
        bad(columns.messages, f"missing field: expected a '{columns.messages}' column, a ShareGPT "
                              f"'{columns.conversations}' column, '{columns.question}' and '{columns.answer}' "
                              f"columns, 'prompt' and 'completion', or 'instruction' and 'output'; "
                              f"found columns: {found}")

    if columns.id not in row:
        example_id = fallback_id or _made_up_id(location)
    else:
        example_id = row[columns.id]
        if isinstance(example_id, bool) or not isinstance(example_id, (str, int)):
            bad(columns.id, f"expected a string or an integer, got {_kind(example_id)}")
        elif not str(example_id).strip():
            bad(columns.id, "empty")
        example_id = str(example_id)

    if problems or messages is None:
        raise DataError(f"{location}: " + "; ".join(problems), [f"{location}: {p}" for p in problems])
    if system_prompt and messages[0].message["role"] != "system":
        messages.insert(0, _Message({"role": "system", "content": system_prompt}, "data.system_prompt", 1))
    untrained = tuple(i for i, m in enumerate(messages) if m.weight == 0 and m.message["role"] == "assistant")
    taken = {columns.id, columns.system, *FORM_COLUMNS[form](columns)}
    meta = {str(k): _json_safe(v) for k, v in row.items() if k not in taken}
    return Example(id=example_id, messages=[m.message for m in messages], source=location, meta=meta,
                   untrained=untrained)


# The columns each row form reads (the others go to meta).
FORM_COLUMNS: dict[str | None, Callable[[ColumnMap], tuple[str, ...]]] = {
    "messages": lambda c: (c.messages,),
    "sharegpt": lambda c: (c.conversations,),
    "question/answer": lambda c: (c.question, c.answer, c.input),
    "prompt/completion": lambda c: ("prompt", "completion"),
    "alpaca": lambda c: ("instruction", "output", c.input),
    None: lambda c: (),
}


def _form(row: dict, columns: ColumnMap) -> str | None:
    # A table may mix forms, a null messages cell meaning "this row uses another form".
    if columns.messages in row and not _blank(row[columns.messages]):
        return "messages"
    if columns.conversations in row and not _blank(row[columns.conversations]):
        return "sharegpt"
    if columns.question in row or columns.answer in row:
        return "question/answer"
    if "prompt" in row and "completion" in row:
        return "prompt/completion"
    if "instruction" in row or "output" in row:
        return "alpaca"
    return "messages" if columns.messages in row else None


def _single_turn(row: dict, question: str, answer: str, columns: ColumnMap, bad: Callable) -> list[_Message]:
    """question/answer or Alpaca's instruction/output: the user turn is the question, then a blank line and the
    input column when that is not empty (Alpaca's "input")."""
    found = ", ".join(map(str, row)) or "(none)"
    messages = []
    system = row.get(columns.system)
    if not _blank(system):  # no column, null, or an empty CSV cell all mean: no system message
        _check_text(system, columns.system, bad)
        messages.append(_Message({"role": "system", "content": system}, columns.system, 1))
    extra = row.get(columns.input)
    extra = None if _blank(extra) or not _check_text(extra, columns.input, bad) else extra
    for role, name in (("user", question), ("assistant", answer)):
        if name not in row:
            bad(name, f"missing field; found columns: {found}")
        elif _check_text(row[name], name, bad):
            content = f"{row[name]}\n\n{extra}" if role == "user" and extra else row[name]
            messages.append(_Message({"role": role, "content": content}, name, 1))
    return messages


def _sharegpt(row: dict, columns: ColumnMap, bad: Callable) -> list[_Message] | None:
    messages = _messages(row[columns.conversations], columns.conversations, bad, SHAREGPT_SHAPE)
    system = row.get(columns.system)  # LLaMA-Factory's ShareGPT keeps the system message in a column
    if messages is None or _blank(system):
        return messages
    if not _check_text(system, columns.system, bad):
        return None
    if messages[0].message["role"] == "system":
        bad(columns.system, f"the row has a system column and a system turn in '{columns.conversations}'; keep one")
        return None
    return [_Message({"role": "system", "content": system}, columns.system, 1), *messages]


def _prompt_completion(row: dict, bad: Callable) -> list[_Message] | None:
    """TRL's prompt/completion: each a list of messages, or a string (the user's, the assistant's). Only the
    completion is trained, as in TRL: assistant turns inside the prompt are marked untrained."""
    parts = []
    for name, role in (("prompt", "user"), ("completion", "assistant")):
        value = row[name]
        if isinstance(value, str) and value.lstrip().startswith("["):  # a CSV cell may hold a list as JSON
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass  # text that starts with "[": the message itself
        if isinstance(value, str):
            parts.append([_Message({"role": role, "content": value}, name, 1)] if _check_text(value, name, bad)
                         else None)
        else:
            parts.append(_messages(value, name, bad, check_order=False))
    prompt, completion = parts
    if prompt is None or completion is None:
        return None
    messages = [_Message(m.message, m.where, 0) for m in prompt] + completion
    return messages if _check_order(messages, "prompt+completion", bad) else None


@dataclass(frozen=True)
class _Shape:
    """How one row form spells a message: the keys of role and content, and its role names (lower case)."""

    role: str
    content: str
    roles: dict[str, str]  # role name as written, lower-cased -> role


MESSAGES_SHAPE = _Shape("role", "content", {r: r for r in ROLES})
SHAREGPT_SHAPE = _Shape("from", "value", {
    "system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
    "tool": "tool", "observation": "tool", "function_response": "tool",
    "function_call": "assistant",  # its value is the call, {"name", "arguments"} as JSON: an assistant tool call
})
ORDER_RULE = ("an optional system message first, then user and assistant alternating, ending with assistant; "
              "an assistant message with tool_calls is followed by one or more tool messages, then an assistant")


@dataclass
class _Message:
    message: dict  # what is handed on: role and content (+ tool_calls, or name/tool_call_id on a tool turn)
    where: str  # the field it came from, for error messages: "messages[3]", "question", ...
    weight: int  # 0: do not train this assistant turn


def _messages(value: Any, name: str, bad: Callable, shape: _Shape = MESSAGES_SHAPE,
              check_order: bool = True) -> list[_Message] | None:
    """A row's list of messages, checked; None if any problem was reported through `bad`."""
    if isinstance(value, str):  # a CSV cell holds the list as JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            bad(name, f"expected a list of {{{shape.role}, {shape.content}}} (as JSON text in a CSV cell), "
                      f"not parsable: {e.msg}")
            return None
    if hasattr(value, "tolist"):  # a numpy array from a table reader
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not value:
        bad(name, f"expected a non-empty list of {{{shape.role}, {shape.content}}}, "
                  f"got {_kind(value) if value else 'an empty one'}")
        return None
    messages: list[_Message] = []
    clean = True
    for i, raw in enumerate(value):
        message = _message(raw, f"{name}[{i}]", bad, shape)
        if message is None:
            clean = False
        elif message.message["role"] == "system" and i == 0 and not message.message["content"].strip():
            continue  # a blank system message means no system message
        else:
            messages.append(message)
    if clean and check_order:
        clean = _check_order(messages, name, bad)
    return messages if clean else None


def _message(raw: Any, where: str, bad: Callable, shape: _Shape) -> _Message | None:
    if type(raw) is dict and len(raw) == 2:  # the common message, exactly {role, content}: checked fast
        written, content = raw.get(shape.role), raw.get(shape.content)
        role = shape.roles.get(written) if type(written) is str and written != "function_call" else None
        if role in ("system", "user", "assistant") and type(content) is str and content and not content.isspace():
            return _Message({"role": role, "content": content}, where, 1)
    if not isinstance(raw, dict):
        bad(where, f"expected an object with {shape.role} and {shape.content}, got {_kind(raw)}")
        return None
    clean = True
    written = raw.get(shape.role)
    role = shape.roles.get(written.strip().lower()) if isinstance(written, str) else None
    if shape.role not in raw:
        bad(f"{where}.{shape.role}", f"missing field; found keys: {', '.join(map(str, raw)) or '(none)'}")
        clean = False
    elif role is None:
        bad(f"{where}.{shape.role}", f"unknown role {written!r}; expected one of {', '.join(shape.roles)}")
        clean = False

    calls = None
    if shape is SHAREGPT_SHAPE and isinstance(written, str) and written.strip().lower() == "function_call":
        calls = _function_call(raw.get(shape.content), f"{where}.{shape.content}", bad)
        clean &= calls is not None
        content = ""
    else:
        listed = raw.get("tool_calls")
        listed = listed.tolist() if hasattr(listed, "tolist") else listed
        if listed is not None and listed != []:  # tables fill a missing key with null; exports write []
            if role == "assistant":
                calls = _tool_calls(listed, f"{where}.tool_calls", bad)
                clean &= calls is not None
            elif role is not None:
                bad(f"{where}.tool_calls", f"only an assistant message can make tool calls, not a {role} message")
                clean = False
        content = _content(raw, where, bad, shape, may_be_blank=bool(calls) or role == "system")
        clean &= content is not None

    weight = raw.get("weight")  # null, as tables fill a key other rows have, means no weight
    if weight is not None and (isinstance(weight, bool) or weight not in (0, 1)):
        bad(f"{where}.weight", f"expected 0 (do not train this turn) or 1, got {weight!r}")
        clean = False
    elif weight == 1 and role not in ("assistant", None):
        bad(f"{where}.weight", f"weight 1 on a {role} message: only assistant turns are trained; "
                               "drop the key or set it to 0")
        clean = False
    if not clean:
        return None
    message: dict[str, Any] = {"role": role, "content": content}
    if calls:
        message["tool_calls"] = calls
    if role == "tool":
        for key in ("name", "tool_call_id"):
            if isinstance(raw.get(key), str) and raw[key]:
                message[key] = raw[key]
    return _Message(message, where, 1 if weight is None else int(weight))


def _content(raw: dict, where: str, bad: Callable, shape: _Shape, may_be_blank: bool) -> str | None:
    """The text of a message; a list of text parts is joined with newlines."""
    name = f"{where}.{shape.content}"
    if shape.content not in raw or raw[shape.content] is None:
        if may_be_blank:
            return ""
        bad(name, f"missing field; found keys: {', '.join(map(str, raw)) or '(none)'}" if shape.content not in raw
            else "expected a string, got null")
        return None
    value = raw[shape.content]
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        texts = []
        for k, part in enumerate(value):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text" or not isinstance(part.get("text"), str):
                what = f"a {kind!r} part" if kind else f"{_kind(part)}"
                bad(f"{name}[{k}]", f"{what} is not text; only text parts ({{\"type\": \"text\", \"text\": ...}}) "
                                    "can be trained on")
                return None
            texts.append(part["text"])
        value = "\n".join(texts)
    if not isinstance(value, str):
        bad(name, f"expected a string or a list of text parts, got {_kind(value)}")
        return None
    if not value.strip() and not may_be_blank:
        bad(name, "empty or whitespace-only")
        return None
    return value


def _tool_calls(value: Any, name: str, bad: Callable) -> list[dict] | None:
    """OpenAI-style tool calls: [{"type": "function", "function": {"name", "arguments"}, "id"?}, ...]."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not value:
        bad(name, f"expected a non-empty list of calls, got {_kind(value) if value else 'an empty one'}")
        return None
    calls = []
    for k, call in enumerate(value):
        where = f"{name}[{k}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            bad(where, 'expected {"type": "function", "function": {"name": ..., "arguments": ...}}, '
                       f"got {_kind(call) if not isinstance(call, dict) else 'keys ' + ', '.join(map(str, call))}")
            return None
        if (call.get("type") or "function") != "function":
            bad(f"{where}.type", f"expected 'function', got {call.get('type')!r}")
            return None
        checked = _call(function, f"{where}.function", bad)
        if checked is None:
            return None
        calls.append({**({"id": call["id"]} if isinstance(call.get("id"), str) else {}),
                      "type": "function", "function": checked})
    return calls


def _call(function: dict, where: str, bad: Callable) -> dict | None:
    if not isinstance(function.get("name"), str) or not function["name"].strip():
        bad(f"{where}.name", f"expected the function's name, got {_kind(function.get('name'))}")
        return None
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as e:
            bad(f"{where}.arguments", f"not parsable as JSON: {e.msg}")
            return None
    if not isinstance(arguments, dict):
        bad(f"{where}.arguments", f"expected an object of arguments (or it as JSON text), got {_kind(arguments)}")
        return None
    return {"name": function["name"], "arguments": arguments}


def _function_call(value: Any, where: str, bad: Callable) -> list[dict] | None:
    """A ShareGPT `function_call` turn's value: {"name", "arguments"} (or a list of them) as JSON text."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            bad(where, f'expected the call as JSON text, {{"name": ..., "arguments": ...}}, not parsable: {e.msg}')
            return None
    calls = value if isinstance(value, list) else [value]
    if not calls or not all(isinstance(c, dict) for c in calls):
        bad(where, f'expected {{"name": ..., "arguments": ...}}, got {_kind(value)}')
        return None
    checked = [_call(c, where, bad) for c in calls]
    if any(c is None for c in checked):
        return None
    return [{"type": "function", "function": c} for c in checked]


def _check_order(messages: list[_Message], name: str, bad: Callable) -> bool:
    roles = [m.message["role"] for m in messages]
    if not roles:
        bad(name, f"only a blank system message; {ORDER_RULE}")
        return False
    start = 1 if roles[0] == "system" else 0
    if len(roles) == start:
        bad(name, f"a system message alone; {ORDER_RULE}")
        return False
    expected = ("user",)
    for m in messages[start:]:
        role = m.message["role"]
        if role not in expected:
            wanted = " or ".join(f"'{r}'" for r in expected)
            bad(f"{m.where}.role", f"expected {wanted}, got '{role}' ({ORDER_RULE})")
            return False
        if role == "user":
            expected = ("assistant",)
        elif role == "assistant":
            expected = ("tool",) if m.message.get("tool_calls") else ("user",)
        else:  # tool
            expected = ("tool", "assistant")
    if roles[-1] != "assistant":
        bad(f"{messages[-1].where}.role",
            f"the last message must be the assistant's answer, got '{roles[-1]}' ({ORDER_RULE})")
        return False
    return True


def _check_text(value: Any, name: str, bad: Callable) -> bool:
    if not isinstance(value, str):
        bad(name, f"expected a string, got {_kind(value)}")
        return False
    if not value.strip():
        bad(name, "empty or whitespace-only")
        return False
    return True


# --------------------------------------------------------------------------------------------
# Whole sources and splits
# --------------------------------------------------------------------------------------------


def load_examples(source: str, split: str, columns: ColumnMap, system_prompt: str | None = None) -> list[Example]:
    """Every row of `source` as an Example; one DataError listing all bad rows if any is bad."""
    with _gc_paused():
        return _load_examples(source, split, columns, system_prompt)


@contextlib.contextmanager
def _gc_paused():
    """Reading makes millions of small objects that all live on: the cyclic garbage collector would scan them
    again and again for nothing (a third of the time on a 50 MB file). Nothing read here holds a cycle."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _load_examples(source: str, split: str, columns: ColumnMap, system_prompt: str | None) -> list[Example]:
    read = _read(source, split)
    problems = list(read.problems)
    examples: list[Example] = []
    first_seen: dict[str, str] = {}
    for location, row in read.rows:
        number = int(location.rsplit(":", 1)[1])
        try:
            example = normalize(location, row, columns, system_prompt, fallback_id=f"{read.stem}-{number:05d}")
        except DataError as e:
            problems.append((number, str(e)))
            continue
        if example.id in first_seen:
            problems.append((number, f"{location}: {columns.id}: duplicate id {example.id!r}, "
                                     f"also at {first_seen[example.id]}"))
            continue
        first_seen[example.id] = location
        examples.append(example)
    if problems:
        raise _bad_rows(read.label, problems)
    if not examples:
        raise DataError(f"{read.label}: no rows")
    return examples


@dataclass(frozen=True)
class SourceCount:
    """What one source gave: its valid rows, the rows taken by its weight, and where they went."""

    source: str  # as errors name it: the path as given, or "id[split]"
    weight: float  # the fraction of its rows taken (a mixture source), else 1.0
    rows: int
    taken: int
    in_train: int = 0
    in_test: int = 0
    dropped: int = 0  # training rows removed because their prompt is a test prompt (data.overlap: drop)


@dataclass
class Splits:
    """What `load_data` found: the two sides, each source's counts, and the train/test prompt overlap."""

    train: list[Example]
    test: list[Example]
    sources: list[SourceCount]  # the training sources in order, then the test file if there is one
    overlap: list[tuple[Example, Example]]  # (training row, test row) with the same prompt
    dropped: int  # training rows removed for the overlap (data.overlap: drop); 0 when it is error

    def report(self) -> list[dict]:
        """One dict per source: rows, weight, taken, in train, in test, dropped; for the notebook's table."""
        return [vars(count) for count in self.sources]


def load_splits(data: DataParams, seed: int,
                echo: Callable[[str], None] = print) -> tuple[list[Example], list[Example]]:
    """(train, test): `load_data`'s two sides; says how many training rows data.overlap: drop removed."""
    splits = load_data(data, seed)
    if splits.dropped:
        echo(f"data.overlap: drop: removed {splits.dropped} training row(s) whose prompt is also the prompt of "
             f"one of {len({id(t) for _, t in splits.overlap})} test row(s): {_overlap_listing(splits.overlap)}")
    return splits.train, splits.test


def load_data(data: DataParams, seed: int) -> Splits:
    """Train and test: the training source (or every source of a mixture, each cut to its weight), and the
    test file or a seeded split of the training rows; then the prompt-overlap check (`data.overlap`)."""
    train, counts = _load_train(data, seed)
    if data.test:
        test = load_examples(data.test, data.test_split, data.columns, data.system_prompt)
        counts.append(SourceCount(_source_of(test[0]), 1.0, len(test), len(test)))
    else:
        train, test = _seeded_split(train, data.test_size, seed, " + ".join(c.source for c in counts))

    overlap = _overlap(train, test)
    if overlap and data.overlap == "error":
        trained = {id(e) for e, _ in overlap}
        raise DataError(f"train ({_sides(train)}) and test ({_sides(test)}) share prompts: "
                        f"{len({id(t) for _, t in overlap})} test row(s) have the prompt of {len(trained)} "
                        f"training row(s), so test rows would be trained on: {_overlap_listing(overlap)}. "
                        "Fix the data, or set data.overlap: drop to remove those rows from train.")
    dropped = {id(e) for e, _ in overlap}
    if dropped:
        train = [e for e in train if id(e) not in dropped]
        if not train:
            raise DataError(f"data.overlap: drop removed every training row: all {len(dropped)} have a test prompt")
    in_train, in_test = Counter(map(_source_of, train)), Counter(map(_source_of, test))
    lost = Counter(_source_of(e) for e, _ in overlap)
    counts = [SourceCount(c.source, c.weight, c.rows, c.taken, in_train[c.source], in_test[c.source], lost[c.source])
              for c in counts]
    return Splits(train, test, counts, overlap, len(dropped))


def _load_train(data: DataParams, seed: int) -> tuple[list[Example], list[SourceCount]]:
    """Every training source, each cut to its weight; the errors of all sources in one DataError."""
    mixture = data.train if isinstance(data.train, list) else [MixtureSource(source=data.train)]
    examples: list[Example] = []
    counts: list[SourceCount] = []
    errors: list[DataError] = []
    for source in mixture:
        try:
            rows = load_examples(source.source, source.split or data.train_split, data.columns, data.system_prompt)
        except DataError as e:
            errors.append(e)
            continue
        label = _source_of(rows[0])
        taken = _take(rows, source.weight, seed, label)
        counts.append(SourceCount(label, source.weight, len(rows), len(taken)))
        examples += taken
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise DataError(f"{len(errors)} of the {len(mixture)} training sources cannot be used:\n"
                        + "\n".join(str(e) for e in errors), [p for e in errors for p in e.problems])
    if len(mixture) > 1:
        _check_unique_ids(examples, data.columns.id)
    return examples, counts


def _take(examples: list[Example], weight: float, seed: int, label: str) -> list[Example]:
    """int(weight × rows) rows, as the handbook's dataset_mixture, chosen by a generator seeded with the seed
    and the source (so two sources of one size are not cut alike); the file's order is kept."""
    if weight >= 1:
        return examples
    k = int(round(weight * len(examples), 9))  # round() first: 0.3 * 10 is 3, not 2.9999
    if k == 0:
        raise DataError(f"{label}: weight {weight} of its {len(examples)} rows takes none; raise the weight")
    chosen = set(random.Random(f"{seed}/{label}").sample(range(len(examples)), k))
    return [e for i, e in enumerate(examples) if i in chosen]


def _check_unique_ids(examples: list[Example], id_column: str) -> None:
    first_seen: dict[str, str] = {}
    clashes = []
    for e in examples:
        if e.id in first_seen:
            clashes.append(f"{e.source}: {id_column}: duplicate id {e.id!r}, also at {first_seen[e.id]}")
        else:
            first_seen[e.id] = e.source
    if clashes:
        more = f"\n  ... and {len(clashes) - MAX_LISTED} more" if len(clashes) > MAX_LISTED else ""
        raise DataError(f"the training sources share {len(clashes)} id(s); ids must be unique across a mixture "
                        f"(drop the id column of one source, or name another with data.columns.id):\n  "
                        + "\n  ".join(clashes[:MAX_LISTED]) + more, clashes)


def _seeded_split(examples: list[Example], test_size: float, seed: int,
                  label: str) -> tuple[list[Example], list[Example]]:
    n = len(examples)
    if test_size < 1:
        # Rounded up, so a small file still gets a test row; round() first keeps 0.3 * 10 at 3, not 4.
        k = math.ceil(round(test_size * n, 9))
    elif test_size == int(test_size):
        k = int(test_size)
    else:
        raise DataError(f"{label}: data.test_size={test_size} is neither a fraction (< 1) nor a whole number of rows")
    if not 1 <= k <= n - 1:
        raise DataError(f"{label}: data.test_size={test_size} puts {k} of {n} rows in test; "
                        f"train and test each need at least one row")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    in_test = set(order[:k])
    # Both sides keep the file's order: easier to read next to the file than a shuffled list.
    train = [e for i, e in enumerate(examples) if i not in in_test]
    test = [e for i, e in enumerate(examples) if i in in_test]
    return train, test


def prompt_key(example: Example) -> str:
    """What makes two prompts the same: each prompt message's role and content with runs of whitespace
    collapsed (and its tool calls), hashed. Ids play no part: the same row under another id is the same."""
    return hashlib.sha1(_prompt_text(example).encode("utf-8")).hexdigest()


def _prompt_text(example: Example) -> str:
    """The prompt as `prompt_key` compares it, before hashing (a dict key of its own in `_overlap`)."""
    return "\x1e".join(f"{m['role']}\x1f{' '.join(m['content'].split())}"
                        + (f"\x1f{json.dumps(m['tool_calls'], sort_keys=True)}" if "tool_calls" in m else "")
                        for m in example.messages[:-1])


def _overlap(train: list[Example], test: list[Example]) -> list[tuple[Example, Example]]:
    """(training row, test row) for each training row whose prompt is a test row's prompt."""
    tests: dict[str, Example] = {}
    for e in test:
        tests.setdefault(_prompt_text(e), e)
    return [(e, tests[key]) for e in train if (key := _prompt_text(e)) in tests]


def _overlap_listing(overlap: list[tuple[Example, Example]]) -> str:
    listed = [f"{t.id!r} ({t.source}) = {e.id!r} ({e.source})" for e, t in overlap[:MAX_LISTED]]
    more = f", and {len(overlap) - MAX_LISTED} more" if len(overlap) > MAX_LISTED else ""
    return ", ".join(listed) + more


def _sides(examples: list[Example]) -> str:
    return " + ".join(dict.fromkeys(map(_source_of, examples)))


# --------------------------------------------------------------------------------------------
# For writing and for the notebook
# --------------------------------------------------------------------------------------------


def to_records(examples: Iterable[Example]) -> list[dict]:
    """[{"id", "messages", **meta}], JSON-safe. A meta column named id or messages becomes "meta.id"."""
    records = []
    for e in examples:
        record: dict[str, Any] = {"id": e.id, "messages": _json_safe(e.messages)}
        for key, value in e.meta.items():
            record[f"meta.{key}" if key in ("id", "messages") else key] = _json_safe(value)
        records.append(record)
    return records


def summarize(examples: Iterable[Example]) -> dict:
    """Row count; rows by source (when there are several: a mixture) and by "lang" (when any row has one);
    assistant turns, those marked untrained (weight 0), rows with no trained turn at all, and rows with tool
    turns, when there are any; mean characters of prompt and reference."""
    examples = list(examples)
    summary: dict[str, Any] = {"rows": len(examples)}
    by_source = Counter(map(_source_of, examples))
    if len(by_source) > 1:
        summary["by_source"] = dict(by_source)
    if any("lang" in e.meta for e in examples):
        summary["by_lang"] = dict(Counter(str(e.meta.get("lang") or "(none)") for e in examples).most_common())
    turns = sum(sum(m["role"] == "assistant" for m in e.messages) for e in examples)
    if turns > len(examples):
        summary["assistant_turns"] = turns
    if any(e.untrained for e in examples):
        summary["untrained_turns"] = sum(len(e.untrained) for e in examples)
        # Rows whose every assistant turn has weight 0: nothing in them is trained.
        summary["rows_all_untrained"] = sum(
            len(e.untrained) == sum(m["role"] == "assistant" for m in e.messages) for e in examples)
    if any(e.has_tools for e in examples):
        summary["rows_with_tools"] = sum(e.has_tools for e in examples)
    prompt_chars = [sum(len(m["content"]) for m in e.prompt) for e in examples]
    reference_chars = [len(e.reference) for e in examples]
    summary["mean_prompt_chars"] = round(sum(prompt_chars) / len(examples), 1) if examples else 0.0
    summary["mean_reference_chars"] = round(sum(reference_chars) / len(examples), 1) if examples else 0.0
    return summary


# --------------------------------------------------------------------------------------------
# Small helpers of this module
# --------------------------------------------------------------------------------------------


def _bad_rows(label: str, problems: list[Problem]) -> DataError:
    ordered = [text for _, text in sorted(problems, key=lambda p: p[0])]  # stable: a row's own order stays
    listed = "\n  ".join(ordered[:MAX_LISTED])
    more = f"\n  ... and {len(ordered) - MAX_LISTED} more" if len(ordered) > MAX_LISTED else ""
    return DataError(f"{label}: {len(ordered)} bad row(s); fix them all and reload:\n  {listed}{more}", ordered)


def _source_of(example: Example) -> str:
    return example.source.rsplit(":", 1)[0]


def _made_up_id(location: str) -> str:
    source, _, number = location.rpartition(":")
    if not number.isdigit():
        return location
    name = Path(source).name
    name = next((name[:-len(s)] for s in SUPPORTED_EXTENSIONS if name.lower().endswith(s)), Path(name).stem)
    return f"{_stem(name, source)}-{int(number):05d}"


def _blank(value: Any) -> bool:
    return value is None or value == ""


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _json_safe(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None  # NaN is not JSON
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "isoformat"):  # date, time, datetime, pandas Timestamp
        return value.isoformat()
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return _json_safe(value.tolist())
    return str(value)  # Decimal, bytes, ...: readable beats lossless in a meta column
