"""The trainer's pass-through fields (`trl.SFTConfig`, as `sftlab.train.trainer.SFTArguments` parses them),
checked at params time without importing trl.

Every key of the `train:` section that is not one of sftlab's own knobs goes into the flat YAML that
`TrlParser` parses in the training process (sftlab.train.trainer.parse_args). A wrong value there used to
fail 30-200 s later as `SystemExit: 2`. Importing trl takes 3-10 s (torch, transformers), too slow for
`sftlab resolve`, so the parser's view of each field is read once from the real parser
(`HfArgumentParser(SFTArguments)`: its argparse actions) and cached as JSON, keyed by the installed trl
and transformers versions and the source of `class SFTArguments`; `make setup` builds it. Later checks read
only that file (milliseconds).

    trainer_fields.names()                          # every SFTConfig field the train section may set
    trainer_fields.problem("weight_decay", "heavy")  # "expected a number, got 'heavy'" (None if fine)

The check follows what the training process does with a YAML value: a string goes through the
argparse `type` of its field (float("heavy") fails there: SystemExit 2), any other value reaches the
dataclass as it is. So a string is converted as argparse would; a number, a bool, a list or a mapping is
checked against the field's kind (int, float, bool, one of choices, mapping). Fields argparse reads as
plain strings (`fsdp`, `report_to`, ...) accept anything, as the trainer does.

Cache: `<sys.prefix>/var/sftlab/trainer-fields-<key>.json` (the environment's own folder: the fields
depend on the packages installed there); not written when that folder is read-only.
`python -m sftlab.trainer_fields` builds it (and prints where it is).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from sftlab.files import atomic_write_text

FORMAT = 1  # bump when the cached description changes shape
TRAINER_SOURCE = Path(__file__).resolve().parent / "train" / "trainer.py"  # defines SFTArguments

# What the check says a field expects, per kind (the schema's own wording, sftlab.config._EXPECTED).
EXPECTED = {"int": "an integer", "float": "a number", "bool": "true or false", "mapping": "a mapping"}
TRUE_STRINGS = ("yes", "true", "t", "y", "1")  # transformers.hf_argparser.string_to_bool
FALSE_STRINGS = ("no", "false", "f", "n", "0")
SHOWN_CHOICES = 12  # a message lists at most this many of a field's choices


def cache_file() -> Path:
    versions = []
    for package in ("trl", "transformers"):
        try:
            versions.append(f"{package}={metadata.version(package)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{package}=none")
    key = hashlib.sha256(f"{FORMAT}|{'|'.join(versions)}|{sys.version_info[:2]}|{_class_source()}".encode())
    return Path(sys.prefix) / "var" / "sftlab" / f"trainer-fields-{key.hexdigest()[:16]}.json"


def _class_source() -> str:
    """The text of `class SFTArguments` in the training script: an edit elsewhere in that file keeps the cache."""
    try:
        text = TRAINER_SOURCE.read_text(encoding="utf-8")
    except OSError:
        return ""
    start = text.find("\nclass SFTArguments(")
    if start < 0:
        return text
    end = re.search(r"\n(?=\S)", text[start + 1:])  # the next top-level line after the class
    return text[start:start + 1 + end.start()] if end else text[start:]


@lru_cache(maxsize=1)
def fields() -> dict[str, dict[str, Any]]:
    """field name -> {"kind": int|float|bool|str|choice|mapping|other, "list": bool, "choices": [...]}"""
    path = cache_file()
    try:
        return json.loads(path.read_text(encoding="utf-8"))["fields"]
    except (OSError, ValueError, KeyError):
        pass
    described = describe()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"fields": described}, indent=1, sort_keys=True))
        for stale in path.parent.glob("trainer-fields-*.json"):  # of packages or a class no longer installed
            if stale != path:
                stale.unlink(missing_ok=True)
    except OSError:
        pass  # a read-only environment: described again next time (slow, still correct)
    return described


def describe() -> dict[str, dict[str, Any]]:
    """Each field as the training script's parser reads it (imports trl: seconds)."""
    import enum

    from transformers import HfArgumentParser
    from transformers.hf_argparser import string_to_bool

    from sftlab.train.trainer import SFTArguments

    described: dict[str, dict[str, Any]] = {}
    for action in HfArgumentParser(SFTArguments)._actions:
        if not action.option_strings or action.dest in described or action.dest == "help":
            continue
        kind, choices = "other", None
        if action.choices is not None:
            kind, choices = "choice", [c for c in action.choices]
        elif action.type is string_to_bool:
            kind = "bool"
        elif action.type in (int, float, str):
            kind = action.type.__name__
        elif action.type is dict or getattr(action.type, "__origin__", None) is dict:
            kind = "mapping"
        elif isinstance(action.type, type) and issubclass(action.type, enum.Enum):
            kind, choices = "choice", [m.value for m in action.type]
        entry: dict[str, Any] = {"kind": kind, "list": action.nargs == "+"}
        if choices is not None:
            entry["choices"] = [c if isinstance(c, (str, int, float, bool)) else str(c) for c in choices]
        described[action.dest] = entry
    return described


def names() -> set[str]:
    return set(fields())


def problem(name: str, value: Any) -> str | None:
    """Why the training process would refuse `value` for field `name` (None: it takes it, or `name` is not
    a trainer field)."""
    field = fields().get(name)
    if field is None or value is None:
        return None
    if field["list"] and isinstance(value, list):
        for item in value:
            why = _item_problem(field, item)
            if why:
                return f"{why} (in the list {value!r})"
        return None
    return _item_problem(field, value)


def _item_problem(field: dict[str, Any], value: Any) -> str | None:
    kind = field["kind"]
    if kind == "choice":
        choices = field["choices"]
        if value in choices or str(value) in map(str, choices):
            return None
        import difflib

        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        shown = ", ".join(map(repr, choices[:SHOWN_CHOICES]))
        more = f" (and {len(choices) - SHOWN_CHOICES} more)" if len(choices) > SHOWN_CHOICES else ""
        return f"expected one of {shown}{more}, got {value!r}{hint}"
    if kind not in EXPECTED:  # read as a string (or by a class of its own): the trainer takes what it gets
        return None
    if isinstance(value, str):  # argparse applies the field's type to a string (hf_argparser)
        ok = {"int": _parses(int, value), "float": _parses(float, value),
              "bool": value.lower() in TRUE_STRINGS + FALSE_STRINGS, "mapping": False}[kind]
    else:  # anything else reaches the dataclass unconverted
        ok = {"int": isinstance(value, int) and not isinstance(value, bool),
              "float": isinstance(value, (int, float)) and not isinstance(value, bool),
              "bool": isinstance(value, bool), "mapping": isinstance(value, dict)}[kind]
    return None if ok else f"expected {EXPECTED[kind]}, got {value!r}"


def _parses(convert, text: str) -> bool:
    try:
        convert(text)
        return True
    except ValueError:
        return False


if __name__ == "__main__":
    fields()
    print(f"trainer fields: {cache_file()}")
