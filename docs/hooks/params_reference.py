"""The params reference, generated from the schema (`sftlab.config.Params`) at every docs build, so it cannot go
stale: every field of every section with its type, default and allowed values, and the comments the schema's
source keeps beside the field (the line's trailing comment and the comment lines right above it).

MkDocs runs `on_page_markdown` (mkdocs.yml `hooks:`): in `params-reference.md` the marker line
`<!-- params-reference -->` becomes the tables. `python docs/hooks/params_reference.py` prints them.
"""

from __future__ import annotations

import ast
import html
import inspect
import io
import json
import textwrap
import tokenize
import types
import typing

from pydantic import BaseModel
from pydantic.fields import FieldInfo

MARKER = "<!-- params-reference -->"
PAGE = "params-reference.md"

# Top-level keys that are not fields of the schema: read by the params loader before validation.
TOP_LEVEL_EXTRA = {"base": ("path", "—", "a params file (relative to this one) that this one overrides, deep-merged: "
                                          "mappings merge key by key, lists and scalars replace (how a study varies "
                                          "one knob)")}
TRAIN_PASS_THROUGH = ("Any other key must be a field of TRL's `SFTConfig` (`warmup_ratio`, `lr_scheduler_type`, "
                      "`bf16`, `fsdp`, …): it is checked against the trainer's own parser when the params are "
                      "validated and handed to the training script flat.")


def _comments(cls: type) -> dict[str, str]:
    """field name -> the comments beside its definition in `cls`'s source (above it, then trailing)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    trailing: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            trailing[token.start[0]] = token.string.lstrip("#").strip()
    found = {}
    body = ast.parse(source).body[0].body
    for node in body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above = []
        row = node.lineno - 1
        while row >= 1 and lines[row - 1].strip().startswith("#"):
            above.insert(0, lines[row - 1].strip().lstrip("#").strip())
            row -= 1
        # A comment block after a blank line heads a group of fields ("# Launch."); one that explains a
        # field follows the field before it (or the class line) directly.
        if above and (row < 1 or not lines[row - 1].strip()):
            above = []
        after = [trailing[line] for line in range(node.lineno, (node.end_lineno or node.lineno) + 1) if line in trailing
                 and not lines[line - 1].strip().startswith("#")]
        found[node.target.id] = " ".join(above + after)
    return found


def field_comments(model: type[BaseModel]) -> dict[str, str]:
    """Comments of every field of `model`, inherited ones included (the subclass's own win)."""
    merged: dict[str, str] = {}
    for cls in reversed(model.__mro__):
        if isinstance(cls, type) and issubclass(cls, BaseModel) and cls is not BaseModel:
            merged.update({k: v for k, v in _comments(cls).items() if v or k not in merged})
    return merged


def type_text(annotation) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{json.dumps(a)}`" if not isinstance(a, str) else f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(type_text(a) for a in args)
    if origin is typing.Annotated:
        return type_text(args[0])
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(type_text(a).replace('`', '') for a in args)}]"
    if annotation is type(None):
        return "`null`"
    return getattr(annotation, "__name__", str(annotation))


def default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.default
    if isinstance(value, BaseModel):
        return "(below)"
    return f"`{json.dumps(value, ensure_ascii=False)}`"


def constraints(field: FieldInfo) -> str:
    words = {"gt": ">", "ge": "≥", "lt": "<", "le": "≤"}
    parts = []
    for item in field.metadata:
        for name, symbol in words.items():
            if getattr(item, name, None) is not None:
                parts.append(f"{symbol} {getattr(item, name)}")
    return ", ".join(parts)


def _own_doc(model: type) -> str:
    """The class's own docstring on one line ('' when it has none: not pydantic's BaseModel's)."""
    doc = model.__dict__.get("__doc__") or ""
    return " ".join(inspect.cleandoc(doc).split())


def _is_model(annotation) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def rows(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, meaning) for every field of `model`, nested sections flattened (`columns.id`)."""
    from sftlab.config import OWN_TRAIN_KEYS

    comments = field_comments(model)
    result = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        if _is_model(field.annotation):
            doc = _own_doc(field.annotation)
            result.append((key, "mapping", "(below)", " ".join(doc.split()) or comments.get(name, "")))
            result += rows(field.annotation, f"{key}.")
            continue
        meaning = comments.get(name, "")
        if not meaning and prefix == "train." and name not in OWN_TRAIN_KEYS:
            meaning = "a field of `trl.SFTConfig`, passed through (null: the trainer's default)"
        limits = constraints(field)
        type_cell = type_text(field.annotation) + (f" ({limits})" if limits else "")
        result.append((key, type_cell, default_text(field), meaning))
    return result


def _text(comment: str) -> str:
    """A source comment as table-cell Markdown: `<experiment>` outside code spans is text, not a tag; a pipe
    does not end the cell."""
    parts = comment.split("`")
    parts = [html.escape(part, quote=False) if i % 2 == 0 else part for i, part in enumerate(parts)]
    return "`".join(parts).replace("|", "\\|")


def _table(entries: list[tuple[str, str, str, str]]) -> str:
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, kind, default, meaning in entries:
        lines.append(f"| `{key}` | {kind} | {default} | {_text(meaning)} |")
    return "\n".join(lines)


def render() -> str:
    from sftlab.config import Params

    sections = {name: f for name, f in Params.model_fields.items() if _is_model(f.annotation)}
    top = [r for r in rows(Params) if "." not in r[0] and r[0] not in sections]
    top += [(key, *value) for key, value in TOP_LEVEL_EXTRA.items()]
    parts = ["## Top level", "", _table(top), ""]
    for name, field in sections.items():
        model = field.annotation
        parts += [f"## `{name}`", ""]
        doc = _own_doc(model)
        if doc:
            parts += [doc, ""]
        parts += [_table(rows(model, f"{name}.")), ""]
        if name == "train":
            parts += [TRAIN_PASS_THROUGH, ""]
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files, **kwargs) -> str:
    if page.file.src_uri == PAGE:
        if MARKER not in markdown:
            raise ValueError(f"docs/{PAGE} lost its marker line {MARKER}: the generated reference has no place")
        return markdown.replace(MARKER, render())
    return markdown


if __name__ == "__main__":
    print(render())
