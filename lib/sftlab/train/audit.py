"""Label audit: before a single step runs, prove that the model will be taught to stop.

The origin lost runs to a model that repeated itself and never stopped: pad == EOS, and its collator
set the label of every pad-id token to -100, so the end-of-turn token was never trained. This audit
builds the trainer exactly as the training script (sftlab.train.trainer) does (same flat config, tokenizer, pad-token choice,
SFTTrainer dataset preparation and collator), collates a few training rows, and checks that every
end-of-turn token that closes a supervised answer carries loss.

    audit = run_label_audit(config_path, rows=8, html_path=train_dir / "label_audit.html")

The model itself is built on the meta device (no weights are loaded): tokenization and collation
do not need them, and a 70B base model can be audited on a laptop.

Raises `UnsupervisedEOSError` when an answer's end-of-turn token carries no loss, explaining why the
model would never learn to stop and how to fix it, unless `allow_unsupervised_eos` (set to reproduce
the failure on purpose). Also raises it when no audited answer contains its end-of-turn token at all
(every row cut by max_length). The HTML token view is written before raising.
"""

from __future__ import annotations

import html
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sftlab import pages
from sftlab.errors import SftlabError

IGNORE = -100
_DISTRIBUTION_KEYS = ("fsdp", "fsdp_config", "deepspeed", "env")


class UnsupervisedEOSError(SftlabError, RuntimeError):
    """The end-of-turn token would carry no loss: the model would not learn to stop."""


@dataclass
class AuditedRow:
    pieces: list[str]  # the text of each token
    token_ids: list[int]
    supervised: list[bool]  # the token carries loss (its label is not -100)
    answer_ends: list[int] = field(default_factory=list)  # positions of end-of-turn tokens that close an answer


@dataclass
class LabelAudit:
    end_of_turn: str
    end_of_turn_id: int
    pad_token: str
    rows: list[AuditedRow] = field(default_factory=list)
    answer_ends: int = 0  # end-of-turn tokens that close a supervised span (an answer)
    answer_ends_supervised: int = 0
    rows_without_end: int = 0  # rows with supervised tokens but no end-of-turn after them (cut by max_length)
    data: Any = None  # sftlab.train.supervision.Report: the whole training set, not only the audited rows
    requested_rows: int = 0  # train.audit_rows

    @property
    def supervised_tokens(self) -> int:
        return sum(sum(r.supervised) for r in self.rows)

    @property
    def total_tokens(self) -> int:
        return sum(len(r.token_ids) for r in self.rows)

    @property
    def ok(self) -> bool:
        return self.answer_ends > 0 and self.answer_ends_supervised == self.answer_ends

    def summary(self) -> str:
        whole = f"whole set: {self.data.summary()}. " if self.data is not None else ""
        fewer = (f" (of {self.requested_rows} asked: the set has no more)"
                 if self.requested_rows > len(self.rows) else "")
        return whole + (f"{len(self.rows)} audited sequences{fewer}, {self.supervised_tokens} of {self.total_tokens} tokens carry loss; "
                f"end-of-turn {self.end_of_turn!r} supervised at {self.answer_ends_supervised} of {self.answer_ends} "
                f"answer ends; pad token {self.pad_token!r}"
                + (f"; {self.rows_without_end} sequence(s) end without it (cut by max_length)" if self.rows_without_end else ""))


def audit_batch(batch: dict, tokenizer, end_of_turn_id: int) -> LabelAudit:
    """Check a collated batch (input_ids, labels) as the model will see it."""
    audit = LabelAudit(end_of_turn=tokenizer.convert_ids_to_tokens(end_of_turn_id), end_of_turn_id=end_of_turn_id,
                       pad_token=str(tokenizer.pad_token))
    attention = batch.get("attention_mask")
    for number, (ids, labels) in enumerate(zip(batch["input_ids"].tolist(), batch["labels"].tolist())):
        if attention is not None:  # drop the batch padding: pad may be the end-of-turn id itself
            length = int(attention[number].sum())
            ids, labels = ids[:length], labels[:length]
        supervised = [label != IGNORE for label in labels]
        # An answer ends where the end-of-turn token follows a supervised token (the end of a prompt
        # turn follows masked tokens, and is rightly masked itself).
        ends = [p for p in range(1, len(ids)) if ids[p] == end_of_turn_id and supervised[p - 1]]
        audit.rows.append(AuditedRow(pieces=token_pieces(tokenizer, ids), token_ids=ids, supervised=supervised,
                                     answer_ends=ends))
        audit.answer_ends += len(ends)
        audit.answer_ends_supervised += sum(supervised[p] for p in ends)
        if any(supervised) and not ends:
            audit.rows_without_end += 1
    return audit


def token_pieces(tokenizer, ids: list[int]) -> list[str]:
    """The text each token adds. Decoded incrementally: a Hangul syllable split over byte-level
    tokens shows up whole on the token that completes it, instead of as replacement characters."""
    pieces, previous = [], ""
    for end in range(1, len(ids) + 1):
        text = tokenizer.decode(ids[:end], skip_special_tokens=False)
        if text.endswith("\ufffd"):
            pieces.append("")
            continue
        pieces.append(text[len(previous):])
        previous = text
    return pieces


def explain(audit: LabelAudit, collator: str) -> str:
    if audit.answer_ends == 0:
        return (f"label audit: none of the {len(audit.rows)} audited sequences contains the end-of-turn token "
                f"{audit.end_of_turn!r} after its answer: every answer is cut by max_length, so the model would "
                "never see where an answer stops. Raise train.max_length.")
    cause = ""
    if audit.pad_token == audit.end_of_turn and collator == "legacy_pad_masked":
        cause = (f" Cause: the pad token is {audit.pad_token!r}, the end-of-turn token itself, and "
                 "collator: legacy_pad_masked sets the label of every pad-id token to -100, so every end-of-turn "
                 "token is masked too.")
    return (f"label audit: the end-of-turn token {audit.end_of_turn!r} carries no loss at "
            f"{audit.answer_ends - audit.answer_ends_supervised} of {audit.answer_ends} answer ends in the audited rows. "
            "The model would never be taught to stop: it learns that an answer continues, and at inference it "
            f"repeats itself until max_new_tokens.{cause} Fix: set train.pad_token: add (a dedicated pad token), "
            "or train.collator: trl (labels come from the completion mask, not the pad id). To reproduce the "
            "failure on purpose, set train.allow_unsupervised_eos: true.")


def run_label_audit(config_path: Path, rows: int = 8, html_path: Path | None = None,
                    allow_unsupervised_eos: bool = False) -> LabelAudit:
    """Tokenize and collate `rows` training rows exactly as `sftlab.train` will; check the stop token."""
    from sftlab.train import trainer as train
    from sftlab.models import end_of_turn_token_id

    with tempfile.TemporaryDirectory() as scratch:
        # Distribution settings change where the model lives, not how rows are tokenized and collated;
        # this process is not a distributed job, and must not export their environment variables.
        config = yaml.safe_load(Path(config_path).read_text(encoding="utf-8"))
        for key in _DISTRIBUTION_KEYS:
            config.pop(key, None)
        local_config = Path(scratch) / "audit_config.yaml"
        local_config.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
        script_args, training_args = train.parse_args(
            ["--config", str(local_config), "--output_dir", scratch, "--report_to", "none",
             "--eval_strategy", "no", "--do_eval", "False"])  # the audit looks at training rows only
        tokenizer, model = train.load_tokenizer_and_model(script_args, training_args, weights=False)
        # Every row, tokenized and cut as the trainer will get it: the report counts what is trained.
        dataset, report = train.load_rows(script_args, training_args, tokenizer)
        if len(dataset) == 0:
            raise UnsupervisedEOSError(f"label audit: none of the {report.rows} training rows is left to train: "
                                       f"{report.summary()}")
        dataset = dataset.select(range(min(rows, len(dataset))))
        trainer = train.build_trainer(script_args, training_args, tokenizer, model, dataset,
                                      trainer_class=_weightless_trainer_class())
        prepared = trainer.train_dataset
        batch = trainer.data_collator([prepared[i] for i in range(len(prepared))])
    audit = audit_batch(batch, tokenizer, end_of_turn_token_id(tokenizer))
    audit.data = report
    audit.requested_rows = rows
    if html_path is not None:
        html_path.write_text(render_html(audit), encoding="utf-8")
    if not audit.ok and not (allow_unsupervised_eos and audit.answer_ends > 0):
        raise UnsupervisedEOSError(explain(audit, script_args.collator)
                                   + (f" Token view: {html_path}" if html_path else ""))
    return audit


def _weightless_trainer_class():
    from trl import SFTTrainer

    class WeightlessSFTTrainer(SFTTrainer):
        """SFTTrainer whose model stays on the meta device: it prepares data, it never trains."""

        def _move_model_to_device(self, model, device):
            pass

    return WeightlessSFTTrainer


_CSS = """
.sftlab-audit { line-height: 1.9; }  /* its font: the shared sftlab style, added by render_html */
.sftlab-audit .row { border: 1px solid #ddd; padding: .4em; margin: .4em 0; white-space: pre-wrap; }
.sftlab-audit span { border-radius: 3px; padding: 0 1px; margin: 0 1px 0 0; }
.sftlab-audit .loss { background: #c8ecc8; }
.sftlab-audit .masked { background: #eee; color: #777; }
.sftlab-audit .eot.loss { background: #3a9d3a; color: white; font-weight: bold; }
.sftlab-audit .eot.masked { background: #d43c3c; color: white; font-weight: bold; }
.sftlab-audit table { border-collapse: collapse; margin: .4em 0; font-family: sans-serif; }
.sftlab-audit th, .sftlab-audit td { border: 1px solid #ddd; padding: .15em .5em; text-align: right; }
"""


def _whole_set_table(report) -> str:
    """Every row of the training set: rows trained, left out, cut, and supervision per answer position."""
    if report is None:
        return ""
    facts = [("rows read", report.rows), ("rows trained", report.trained),
             ("rows longer than max_length", report.overlong)]
    facts += [(f"left out: {why}", n) for why, n in report.dropped.items()]
    facts += [(f"cut: {why}", n) for why, n in report.truncated.items()]
    head = "".join(f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in facts)
    turns = "".join(
        f"<tr><td>{n}</td><td>{s.turns}</td><td>{s.trained}</td><td>{s.untrained_weight0}</td>"
        f"<td>{s.untrained_last_only}</td><td>{s.cut}</td><td>{s.supervised_tokens}</td></tr>"
        for n, s in enumerate(report.positions, start=1))
    return ("<h4>Whole training set</h4><table class=\"facts\">" + head + "</table>"
            "<h4>Supervision per answer (1st, 2nd, ... assistant turn of a conversation)</h4>"
            "<table class=\"turns\"><tr><th>answer</th><th>rows with it</th><th>trained</th><th>weight 0</th>"
            "<th>context only (turns: last)</th><th>cut away</th><th>supervised tokens</th></tr>" + turns + "</table>")


def render_html(audit: LabelAudit) -> str:
    """One line of tokens per sequence: green carries loss, grey is masked; the end-of-turn token that
    closes each answer is solid green when supervised and solid red when not. All text is escaped."""
    verdict = "OK: the model is taught to stop" if audit.ok else "PROBLEM: the model is not taught to stop"
    rows = []
    for number, row in enumerate(audit.rows):
        spans = []
        for position, (piece, token_id, loss) in enumerate(zip(row.pieces, row.token_ids, row.supervised)):
            classes = ("loss" if loss else "masked") + (" eot" if position in row.answer_ends else "")
            shown = html.escape(piece).replace("\n", "↵\n") if piece else "·"
            spans.append(f'<span class="{classes}" title="id {token_id}">{shown}</span>')
        rows.append(f'<div class="row"><b>#{number}</b> {"".join(spans)}</div>')
    return pages.styled((f'<!doctype html><html><head><meta charset="utf-8"><title>label audit</title>'
            f"<style>{_CSS}</style></head><body><div class=\"sftlab-audit\">"
            f"<h3>Label audit — {html.escape(verdict)}</h3><p>{html.escape(audit.summary())}</p>"
            + _whole_set_table(audit.data)
            + f'<p><span class="loss">carries loss</span> <span class="masked">masked (-100)</span> '
            f'<span class="eot loss">answer end, supervised</span> <span class="eot masked">answer end, masked</span></p>'
            + "".join(rows) + "</div></body></html>"), ".sftlab-audit", monospace=True)
