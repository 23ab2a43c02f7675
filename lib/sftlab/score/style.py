"""Style features of an answer, for the style-controlled ranking (sftlab.score.pairwise).

As Arena-Hard-Auto (`utils/add_markdown_info.py`, `show_result.py` at lmarena/arena-hard-auto 196f6b8):
markdown elements are counted after removing code blocks (headers `#`..`######`, ordered and unordered
list items, bold `**x**` / `__x__`); a pair of answers (a, b) becomes one regressor per feature:

- length: (a - b) / (a + b), in tokens (theirs) and in characters (ours: the tokenizer of a fine-tuned model
  changes what a token is, characters do not);
- markdown: densities d = count / (tokens + 1), then (d_a - d_b) / (d_a + d_b + 1);
- Hangul (ours, for Korean answers): the share of Hangul among an answer's letters, a - b (a judge may
  prefer, or punish, an answer that switches language).
"""

from __future__ import annotations

import re

import numpy as np

FEATURES = ("tokens", "characters", "headers", "lists", "bold", "hangul")
MARKDOWN = ("headers", "lists", "bold")
_CODE = re.compile("```([^`]*)```")
_HEADER = re.compile(r"^#{1,6}\s", re.MULTILINE)
_ORDERED = re.compile(r"^\s*\d+\.\s", re.MULTILINE)
_UNORDERED = re.compile(r"^\s*[-*+]\s", re.MULTILINE)
_BOLD = (re.compile(r"\*\*[^*\n]+\*\*"), re.compile(r"__[^_\n]+__"))
_HANGUL = re.compile("[\uac00-\ud7a3\u1100-\u11ff\u3130-\u318f]")


def answer_style(text: str | None, n_tokens: float | None) -> dict[str, float]:
    """The raw style counts of one answer."""
    text = text or ""
    plain = text
    for block in _CODE.findall(text):  # Arena-Hard removes each code block's content before counting
        plain = plain.replace(block, "")
    # Arena-Hard counts each header level with its own pattern (^#{k}\s); only exact levels match, so the
    # sum over levels is the number of header lines.
    letters = [c for c in text if c.isalpha()]
    return {"tokens": float(n_tokens or 0), "characters": float(len(text)),
            "headers": float(len(_HEADER.findall(plain))),
            "lists": float(len(_ORDERED.findall(plain)) + len(_UNORDERED.findall(plain))),
            "bold": float(sum(len(p.findall(plain)) for p in _BOLD)),
            "hangul": (sum(1 for c in letters if _HANGUL.match(c)) / len(letters)) if letters else 0.0}


def differences(first: np.ndarray, second: np.ndarray, features: tuple[str, ...] = FEATURES) -> np.ndarray:
    """Rows of pairs -> one regressor per feature (the module docstring); `first`, `second`: arrays of
    raw counts, columns in FEATURES order. Antisymmetric: swapping the answers negates every regressor."""
    index = {name: i for i, name in enumerate(FEATURES)}
    tokens_a, tokens_b = first[:, index["tokens"]], second[:, index["tokens"]]
    columns = []
    for name in features:
        a, b = first[:, index[name]], second[:, index[name]]
        if name in ("tokens", "characters"):
            total = a + b
            columns.append(np.divide(a - b, total, out=np.zeros_like(a), where=total > 0))
        elif name in MARKDOWN:
            da, db = a / (tokens_a + 1), b / (tokens_b + 1)
            columns.append((da - db) / (da + db + 1))
        else:
            columns.append(a - b)
    return np.column_stack(columns) if columns else np.zeros((len(first), 0))
