"""Which tokens of every training row carry loss: decided here, for the whole set, before the trainer runs.

    rows, report = supervision.tokenize(conversations, tokenizer, turns="all", loss="completion",
                                        max_length=1024, overlong="error")

A conversation is {"id", "messages", "untrained": [message indexes of assistant turns with weight 0],
"tools": optional tool schemas}. The chat template renders it once; each assistant turn's characters are
located by rendering the conversation up to the turn (with the generation prompt) and through the turn,
so a turn's span is exactly the text the model produces for it, end-of-turn token included. The rendered
text is tokenized once (fast tokenizer, batched, with offsets); a token carries loss when it starts inside
the span of a trained turn:

    turns: all     every assistant turn, except those with weight: 0 (the default)
    turns: last    only the final assistant turn; the earlier answers are context
    loss: all      every token of the row (the turns knob then changes nothing)

A row longer than `max_length` (the `overlong` policy):
    error       refuse the run, listing the rows and what each would lose (the default)
    drop        leave the row out
    keep_start  cut its end (TRL's truncation): later answers or their end-of-turn token may be lost
    keep_end    cut its start: earlier turns and the system prompt may be lost; the last answer stays whole
                unless it alone is longer than max_length

A row left with no supervised token (every answer weight: 0, or every answer cut away) is left out and
counted. The trainer receives `input_ids` + `completion_mask` already cut to `max_length`, so it tokenizes,
truncates and drops nothing itself: the rows trained are the rows counted in the report.

Raises `SupervisionError` (a ValueError) for overlong rows under `error`, for a chat template that renders
earlier turns differently once later turns follow (their answers cannot be located: use `turns: last`), for
tool-call turns with a template that does not render tools, and for a tokenizer without offsets.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

from sftlab.errors import SftlabError

TURNS = ("all", "last")
OVERLONG = ("error", "drop", "keep_start", "keep_end")
MAX_LISTED = 10


class SupervisionError(SftlabError, ValueError):
    """Training rows that cannot be supervised as asked; the message names the rows and the way forward."""


@dataclass
class TurnStats:
    """One assistant-turn position (1st answer, 2nd answer, ...) over the whole set."""

    turns: int = 0  # rows that have an answer at this position
    trained: int = 0  # ...of which carry loss in the rows handed to the trainer
    untrained_weight0: int = 0  # masked because the row says weight: 0
    untrained_last_only: int = 0  # masked because of turns: last
    cut: int = 0  # trained turns that lost every token to max_length
    supervised_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class Report:
    """What the trainer will see, counted over every row (not a sample)."""

    turns: str
    loss: str
    max_length: int | None
    overlong_policy: str
    rows: int = 0  # rows read
    trained: int = 0  # rows handed to the trainer
    overlong: int = 0  # rows longer than max_length (before the policy)
    dropped: Counter = field(default_factory=Counter)  # reason -> rows left out
    truncated: Counter = field(default_factory=Counter)  # reason -> rows kept but cut
    tokens: int = 0  # tokens handed to the trainer
    supervised_tokens: int = 0
    end_of_turn_supervised: int = 0  # trained answers whose end-of-turn token carries loss
    end_of_turn_lost: int = 0  # trained answers whose end-of-turn token was cut away
    positions: list[TurnStats] = field(default_factory=list)
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> first row ids

    def _note(self, counter: Counter, reason: str, row_id: str) -> None:
        counter[reason] += 1
        listed = self.examples.setdefault(reason, [])
        if len(listed) < MAX_LISTED:
            listed.append(row_id)

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "rows_trained": self.trained, "rows_overlong": self.overlong,
                "rows_dropped": dict(self.dropped), "rows_truncated": dict(self.truncated),
                "turns": self.turns, "loss": self.loss, "max_length": self.max_length,
                "overlong": self.overlong_policy, "tokens": self.tokens, "supervised_tokens": self.supervised_tokens,
                "end_of_turn_supervised": self.end_of_turn_supervised, "end_of_turn_lost": self.end_of_turn_lost,
                "by_turn": [{"turn": n, **s.as_dict()} for n, s in enumerate(self.positions, start=1)],
                "examples": self.examples}

    def summary(self) -> str:
        """One paragraph: rows read and trained, what was left out or cut and why, loss per answer position."""
        parts = [f"{self.trained} of {self.rows} rows trained ({self.supervised_tokens} of {self.tokens} tokens "
                 f"carry loss; turns: {self.turns}, loss: {self.loss}, max_length {self.max_length}, "
                 f"overlong: {self.overlong_policy})"]
        if self.dropped:
            parts.append("left out: " + ", ".join(f"{n} {why}" for why, n in self.dropped.items()))
        if self.truncated:
            parts.append("cut: " + ", ".join(f"{n} {why}" for why, n in self.truncated.items()))
        per_turn = "; ".join(
            f"answer {n}: {s.trained} of {s.turns} trained, {s.supervised_tokens} tokens"
            + (f" ({s.untrained_weight0} weight 0)" if s.untrained_weight0 else "")
            + (f" ({s.untrained_last_only} context only, turns: last)" if s.untrained_last_only else "")
            for n, s in enumerate(self.positions, start=1))
        if per_turn:
            parts.append(per_turn)
        return "; ".join(parts)


@dataclass
class _Rendered:
    row_id: str
    text: str
    spans: list[tuple[int, int, bool, str]]  # (start char, end char, trained, why not) per assistant turn


def tokenize(conversations: Iterable[dict], tokenizer, *, turns: str = "all", loss: str = "completion",
             max_length: int | None = 1024, overlong: str = "error", end_of_turn_id: int | None = None,
             batch_size: int = 1000) -> tuple[list[dict], Report]:
    """[{"id", "input_ids", "completion_mask"}] for the rows to train, and the report over all of them."""
    if turns not in TURNS:
        raise SupervisionError(f"train.turns: {turns!r}; expected one of {', '.join(TURNS)}")
    if overlong not in OVERLONG:
        raise SupervisionError(f"train.overlong: {overlong!r}; expected one of {', '.join(OVERLONG)}")
    if not getattr(tokenizer, "is_fast", False):
        raise SupervisionError(f"{type(tokenizer).__name__} is not a fast tokenizer: sftlab locates each answer's "
                               "tokens by their character offsets, which only fast tokenizers give")
    if end_of_turn_id is None:
        from sftlab.models import end_of_turn_token_id

        end_of_turn_id = end_of_turn_token_id(tokenizer)
    report = Report(turns=turns, loss=loss, max_length=max_length, overlong_policy=overlong)
    out: list[dict] = []
    overlong_rows: list[tuple[str, int, str]] = []
    batch: list[_Rendered] = []

    def flush() -> None:
        encoded = tokenizer([r.text for r in batch], add_special_tokens=False, return_offsets_mapping=True)
        for rendered, ids, offsets in zip(batch, encoded["input_ids"], encoded["offset_mapping"]):
            kept = _supervise(rendered, ids, offsets, report, end_of_turn_id, loss, max_length, overlong,
                              overlong_rows)
            if kept is not None:
                out.append(kept)
        batch.clear()

    template_tools = _renders_tools(tokenizer)
    no_tools: list[str] = []
    for conversation in conversations:
        report.rows += 1
        if conversation.get("tools") or any(m.get("role") == "tool" or m.get("tool_calls")
                                            for m in conversation["messages"]):
            if not template_tools:
                no_tools.append(str(conversation["id"]))
                continue
        batch.append(_render(conversation, tokenizer, turns))
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    if no_tools:
        raise SupervisionError(
            f"{len(no_tools)} training row(s) hold tool calls or tool results ({', '.join(no_tools[:MAX_LISTED])}"
            f"{' ...' if len(no_tools) > MAX_LISTED else ''}), but the model's chat template does not render "
            "tools, so they cannot be trained as written: set model.chat_template to a template that does "
            "(one that uses `tools`/`tool_calls`), or leave those rows out of the data")
    if overlong == "error" and overlong_rows:
        raise SupervisionError(_overlong_message(overlong_rows, report))
    return out, report


def _render(conversation: dict, tokenizer, turns: str) -> _Rendered:
    messages = conversation["messages"]
    row_id = str(conversation["id"])
    untrained = set(conversation.get("untrained") or ())
    tools = conversation.get("tools") or None
    kwargs = {"tokenize": False, **({"tools": tools} if tools else {})}
    text = tokenizer.apply_chat_template(messages, **kwargs)
    answers = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    spans = []
    if turns == "last":  # the earlier answers are context: counted per position, never located
        spans = [(0, 0, False, "turns: last")] * (len(answers) - 1)
        answers = answers[-1:]
    for i in answers:
        before = tokenizer.apply_chat_template(messages[:i], add_generation_prompt=True, **kwargs)
        through = text if i == len(messages) - 1 else tokenizer.apply_chat_template(messages[: i + 1], **kwargs)
        if not (text.startswith(through) and through.startswith(before)):
            if i == answers[-1]:
                # The final answer: start where the prompt and the whole text part, as TRL does.
                start = _common_prefix(before, text)
                spans.append((start, len(text), i not in untrained, "weight 0"))
                continue
            raise SupervisionError(
                f"row {row_id}: the chat template renders the conversation before answer {len(spans) + 1} "
                "differently once later turns follow (some templates drop or rewrite earlier turns, e.g. their "
                "reasoning), so that answer's tokens cannot be located in the full conversation. Use "
                "train.turns: last (only the final answer carries loss), or a template that renders a "
                "conversation's turns the same whatever follows (model.chat_template)")
        trained, why = i not in untrained, "weight 0"
        spans.append((len(before), len(through), trained, why))
    return _Rendered(row_id, text, spans)


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _supervise(rendered: _Rendered, ids: list[int], offsets: list[tuple[int, int]], report: Report,
               end_of_turn_id: int, loss: str, max_length: int | None, overlong: str,
               overlong_rows: list) -> dict | None:
    n = len(ids)
    starts = [s for s, _, _, _ in rendered.spans]
    # The turn each token belongs to (by where it starts), -1 for prompt tokens.
    turn_of = []
    for start, end in offsets:
        k = bisect.bisect_right(starts, start) - 1
        turn_of.append(k if k >= 0 and start < rendered.spans[k][1] else -1)
    if loss == "all":
        mask = [1] * n
    else:
        mask = [1 if t >= 0 and rendered.spans[t][2] else 0 for t in turn_of]

    # Each answer's token positions and end-of-turn positions, in one pass over the row.
    tokens_of: list[list[int]] = [[] for _ in rendered.spans]
    ends_of: list[list[int]] = [[] for _ in rendered.spans]
    for p, k in enumerate(turn_of):
        if k >= 0:
            tokens_of[k].append(p)
            if ids[p] == end_of_turn_id:
                ends_of[k].append(p)

    # The window kept under the policy.
    low, high = 0, n
    if max_length is not None and n > max_length:
        report.overlong += 1
        if overlong == "error":
            overlong_rows.append((rendered.row_id, n, _what_keep_start_loses(rendered, mask, ends_of, max_length)))
            return None  # the whole run is refused once every row is read
        elif overlong == "drop":
            report._note(report.dropped, "longer than max_length (overlong: drop)", rendered.row_id)
            return None
        elif overlong == "keep_start":
            high = max_length
        else:
            low = n - max_length

    # Per answer position: what is trained, masked, cut; where its end-of-turn token is.
    cut_end_of_turn = lost_answer = cut_answer = False
    while len(report.positions) < len(rendered.spans):
        report.positions.append(TurnStats())
    positions_seen = []
    for k, (_, _, trained, why) in enumerate(rendered.spans):
        stats = report.positions[k]
        tokens, ends = tokens_of[k], ends_of[k]
        kept = [p for p in tokens if low <= p < high]
        positions_seen.append((stats, trained, why, kept, tokens, ends))
        if trained:
            if tokens and not kept:
                lost_answer = True
            if len(kept) < len(tokens):
                cut_answer = True
            if ends and not (low <= ends[-1] < high):
                cut_end_of_turn = True

    supervised = sum(mask[low:high])
    if supervised == 0:
        reason = ("every answer cut away by max_length (overlong: keep_start)" if lost_answer
                  else "no answer to train (weight: 0 on every assistant turn)")
        report._note(report.dropped, reason, rendered.row_id)
        return None
    for stats, trained, why, kept, tokens, ends in positions_seen:
        stats.turns += 1
        if not trained:
            if why == "weight 0":
                stats.untrained_weight0 += 1
            else:
                stats.untrained_last_only += 1
            continue
        if tokens and not kept:
            stats.cut += 1
            continue
        stats.trained += 1
        stats.supervised_tokens += sum(mask[p] for p in kept)
        if ends and low <= ends[-1] < high:
            report.end_of_turn_supervised += 1
        elif ends:
            report.end_of_turn_lost += 1
    if (low, high) != (0, n):
        if cut_end_of_turn:
            report._note(report.truncated, "an answer's end-of-turn token cut away", rendered.row_id)
        elif cut_answer:
            report._note(report.truncated, "part of an answer cut away", rendered.row_id)
        else:
            report._note(report.truncated, "context cut, answers whole", rendered.row_id)
    report.trained += 1
    report.tokens += high - low
    report.supervised_tokens += supervised
    return {"id": rendered.row_id, "input_ids": ids[low:high], "completion_mask": mask[low:high]}


def _what_keep_start_loses(rendered: _Rendered, mask: list[int], ends_of: list[list[int]], max_length: int) -> str:
    first_trained = next((p for p, m in enumerate(mask) if m), None)
    if first_trained is not None and first_trained >= max_length:
        return "every answer token"
    last_trained = max((k for k, span in enumerate(rendered.spans) if span[2]), default=None)
    if last_trained is not None and ends_of[last_trained] and ends_of[last_trained][-1] >= max_length:
        return "its end-of-turn token"
    return "context only"


def _overlong_message(rows: list[tuple[str, int, str]], report: Report) -> str:
    losses = Counter(what for _, _, what in rows)
    listed = ", ".join(f"{row_id} ({n} tokens)" for row_id, n, _ in rows[:MAX_LISTED])
    more = f" and {len(rows) - MAX_LISTED} more" if len(rows) > MAX_LISTED else ""
    return (f"{len(rows)} of {report.rows} training rows are longer than train.max_length={report.max_length} "
            f"tokens: {listed}{more}. Cut as the trainer would (keep the start), "
            f"{losses.get('every answer token', 0)} would lose every answer token (and be left out of training), "
            f"{losses.get('its end-of-turn token', 0)} their end-of-turn token (the model would not learn to stop "
            f"there), {losses.get('context only', 0)} only context. Nothing is dropped or cut silently: raise "
            "train.max_length, or set train.overlong: drop (leave them out), keep_end (cut the start, keep the "
            "last answer whole) or keep_start (cut the end).")


def _renders_tools(tokenizer) -> bool:
    template = tokenizer.chat_template
    if isinstance(template, dict):
        template = " ".join(template.values())
    return bool(template) and ("tool_calls" in template or "tools" in template)
