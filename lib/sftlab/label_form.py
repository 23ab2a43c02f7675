"""The labelling form: a person scores answers one at a time, by mouse or by keyboard, blind to the checkpoint.

    form = label_form.widget(params, n=10)                     # builds a LabelForm and displays it
    form = LabelForm(params, labels.sample(params, 10))        # the same, by hand
    form.choose("accuracy", 4); form.save(); form.back(); form.skip(); form.reopen(0)   # what the buttons do

An anywidget (its front end is `label_form.js`, beside this file): the Python side holds the queue and writes
every label through `sftlab.labels.add`; the browser only shows `view` and sends what the person did.
- No default score: every criterion starts unset and Save is enabled only once each is set (and a labeller name
  is given); `save()` refuses the same, so nothing unset is ever written.
- Back / Skip move through the queue; an answer already labelled shows its latest label, and saving again
  appends a revision (the latest label wins). Any labelled answer can be reopened from the list under the form.
- Blind: the view holds the question, reference and answer(s), never the checkpoint; pairs are shown in a drawn
  order, as `sample_pairs` made them.
- The labeller name is remembered per login (`labels.remember_labeller`); the form counts the labels so far.
- Keyboard: a digit sets the focused criterion and moves to the next, ↑/↓ move between criteria, Enter saves,
  ← goes back, → skips. The form stops its keys from reaching JupyterLab's own shortcuts.
- Korean is drawn with NanumGothic cut to the characters shown (`pages.scoped_style`): no Korean font needed.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import anywidget
import traitlets

from sftlab import labels, pages
from sftlab.config import Params
from sftlab.judge.pairwise import CRITERION, PAIR_SEPARATOR, VERDICTS, pair_name

SCOPE = ".sftlab-label-form"  # the class the front end gives its root element; the style is scoped to it
KEYS = "digit: set the focused criterion · ↑↓: criterion · Enter: save & next · ←: back · →: skip"

CSS = """
.sftlab-label-form { max-width: 60em; padding: .4em; border: 1px solid #ddd; border-radius: 4px; outline: none; }
.sftlab-label-form .sftlab-head { display: flex; gap: 1.5em; align-items: center; flex-wrap: wrap; }
.sftlab-label-form .sftlab-where { color: #555; margin: .4em 0; }
.sftlab-label-form .sftlab-text { white-space: pre-wrap; overflow-wrap: anywhere; border-left: 3px solid #ddd;
  padding: .2em .6em; margin: 0 0 .5em 0; max-height: 22em; overflow: auto; }
.sftlab-label-form .sftlab-note { color: #8a5300; }
.sftlab-label-form .sftlab-criterion { display: flex; gap: .6em; align-items: center; padding: .25em .3em;
  border-radius: 4px; outline: none; }
.sftlab-label-form .sftlab-criterion:focus { background: #e8f0fe; box-shadow: 0 0 0 2px #4a7bd0 inset; }
.sftlab-label-form .sftlab-criterion .sftlab-name { min-width: 12em; font-weight: bold; }
.sftlab-label-form .sftlab-criterion button { min-width: 2.4em; }
.sftlab-label-form .sftlab-criterion button.sftlab-on { background: #2f6fd0; color: white; border-color: #2f6fd0; }
.sftlab-label-form .sftlab-criterion.sftlab-unset .sftlab-name::after { content: " (unset)"; color: #b00020;
  font-weight: normal; }
.sftlab-label-form .sftlab-actions { margin: .5em 0; display: flex; gap: .5em; }
.sftlab-label-form .sftlab-keys, .sftlab-label-form .sftlab-status { color: #555; font-size: .9em; }
"""


def _text(title: str, text: str, note: str = "") -> str:
    note = f' <span class="sftlab-note">{html.escape(note)}</span>' if note else ""
    return f'<div><b>{html.escape(title)}</b>{note}</div><div class="sftlab-text">{html.escape(text)}</div>'


def _question(row) -> str:
    return "\n".join(m["content"] for m in row.prompt if m.get("role") == "user")


def _stopped(row) -> str:
    return "did not stop: cut at max_new_tokens" if row.finish_reason == "length" else ""


class LabelForm(anywidget.AnyWidget):
    """One answer (or pair) at a time from `items` (`labels.sample` rows, or `labels.sample_pairs` pairs in
    pairwise mode); see the module docstring."""

    _esm = Path(__file__).with_name("label_form.js")
    _css = CSS
    view = traitlets.Dict().tag(sync=True)  # what is shown: html, criteria, position, revising note
    values = traitlets.Dict().tag(sync=True)  # criterion key -> chosen value; an unset criterion is absent
    labeller = traitlets.Unicode("").tag(sync=True)
    count = traitlets.Int(0).tag(sync=True)  # answers (pairs) labelled so far in this experiment
    status = traitlets.Unicode("").tag(sync=True)
    fonts = traitlets.Unicode("").tag(sync=True)  # <style>: the shared rules and the font cut for this view
    reopenable = traitlets.List().tag(sync=True)  # labels to reopen: [label text], by position
    unit = traitlets.Unicode("answers").tag(sync=True)  # what is counted: answers, or pairs in pairwise mode
    keyboard = traitlets.Unicode(KEYS).tag(sync=True)  # the keyboard help line

    def __init__(self, params: Params, items: list, labeller: str = "", picked: str = "stratified"):
        super().__init__()
        from sftlab.infer import store

        self.params, self.items, self.picked = params, list(items), [picked] * len(items)
        self.pairwise = params.judge.mode == "pairwise"
        self.unit = "pairs" if self.pairwise else "answers"
        self.index, self.saved, self.skipped = 0, 0, 0
        self._rows = {(row.checkpoint, row.id): row for row in store.read_generations(params.layout.generations)}
        self._rubrics: dict[Path, Any] = {}
        self._reopen_keys: list[tuple[str, str]] = []
        self._characters: set[int] = set()  # the Korean the font cut covers: the whole queue's, cut once
        self._cover("".join(self._item_html(item) + self._criteria_text(item) for item in self.items))
        self.labeller = labeller.strip() or labels.remembered_labeller(params.layout)
        if labeller.strip():
            labels.remember_labeller(params.layout, self.labeller)
        self.observe(self._on_labeller, names="labeller")
        self.on_msg(self._on_message)
        self._refresh()

    # --- what the buttons and keys do ---
    def choose(self, key: str, value: Any) -> None:
        self.values = {**self.values, key: value}

    def save(self) -> bool:
        """Append a label for the answer shown, if every criterion is set and a labeller is named; then move on."""
        if self.index >= len(self.items):
            return False
        criteria = self.view.get("criteria", [])
        missing = [c["key"] for c in criteria if self.values.get(c["key"]) not in [o["value"] for o in c["options"]]]
        if missing:
            self.status = f"not saved: set {', '.join(missing)} first (there is no default score)"
            return False
        if not self.labeller.strip():
            self.status = "not saved: type your name in 'labeller' first (it is kept for next time)"
            return False
        checkpoint, sample_id = self._key(self.items[self.index])
        scores = {c["key"]: int(self.values[c["key"]]) for c in criteria}
        labels.add(self.params.layout, checkpoint, sample_id, scores, self.labeller.strip(),
                   picked=self.picked[self.index])
        self.saved += 1
        self.index += 1
        self._refresh(f"saved answer {self.index} of {len(self.items)}")
        return True

    def back(self) -> None:
        if self.index > 0:
            self.index -= 1
            self._refresh()

    def skip(self) -> None:
        if self.index < len(self.items):
            self.skipped += 1
            self.index += 1
            self._refresh(f"skipped answer {self.index} of {len(self.items)}: not labelled")

    def reopen(self, position: int) -> None:
        """Show the labelled answer at `position` of `reopenable` (its latest label preset) to revise it."""
        checkpoint, sample_id = self._reopen_keys[position]
        if self.pairwise:
            first, _, second = checkpoint.partition(PAIR_SEPARATOR)
            item = (self._rows[(first, sample_id)], self._rows[(second, sample_id)])
        else:
            item = self._rows[(checkpoint, sample_id)]
        self.items.insert(self.index, item)
        self.picked.insert(self.index, "reopened")
        self._refresh()

    # --- the queue and the view ---
    def _key(self, item) -> tuple[str, str]:
        if self.pairwise:
            first, second = item
            return pair_name(first.checkpoint, second.checkpoint), first.id
        return item.checkpoint, item.id

    def _criteria(self, item) -> list[dict[str, Any]]:
        if self.pairwise:
            return [{"key": CRITERION, "title": "which answer is better?", "description": "",
                     "options": [{"value": value, "label": name, "digit": str(number)}
                                 for number, (name, value) in enumerate(VERDICTS.items(), start=1)]}]
        from sftlab.judge.rubric import load_rubric
        from sftlab.judge.stage import rubric_path

        path = rubric_path(self.params.judge, item)
        if path not in self._rubrics:
            self._rubrics[path] = load_rubric(path)
        return [{"key": c.key, "title": c.key if c.name in ("", c.key) else f"{c.key} — {c.name}",
                 "description": c.description,
                 "options": [{"value": v, "label": str(v), "digit": str(v) if 0 <= v <= 9 else ""}
                             for v in range(c.scale[0], c.scale[1] + 1)]}
                for c in self._rubrics[path].criteria]

    def _item_html(self, item) -> str:
        row = item[0] if self.pairwise else item
        parts = [_text("Question", _question(row)), _text("Reference", row.reference)]
        if self.pairwise:  # the models stay hidden: the verdict is on the answers alone
            parts += [_text(f"Answer {side}", answer.output, _stopped(answer)) for side, answer in zip("AB", item)]
        else:  # blind: which checkpoint wrote it is not shown
            parts.append(_text("Answer", row.output, _stopped(row)))
        return "".join(parts)

    def _refresh(self, status: str = "") -> None:
        latest = {key: row for key, row in labels.latest(self.params.layout).items()
                  if (PAIR_SEPARATOR in key[0]) == self.pairwise}
        self.count = len(latest)
        self._reopen_keys = sorted(latest, key=lambda k: latest[k]["labelled_at"], reverse=True)
        self.reopenable = [self._reopen_text(key, latest[key]) for key in self._reopen_keys]
        if self.index >= len(self.items):
            self.values = {}
            self.view = {"done": True, "html": html.escape(
                f"Done: {self.saved} saved and {self.skipped} skipped in this form. Go back to revise, reopen any "
                "labelled answer below, or run the cell again for a new sample."),
                "criteria": [], "where": f"{len(self.items)} of {len(self.items)}"}
        else:
            item = self.items[self.index]
            key = self._key(item)
            earlier = latest.get(key)
            if earlier is None and self.pairwise:  # a pair labelled in the other order
                first, _, second = key[0].partition(PAIR_SEPARATOR)
                earlier = latest.get((pair_name(second, first), key[1]))
                earlier = None if earlier is None else {**earlier, "scores": {
                    k: -v for k, v in earlier["scores"].items()}}
            criteria = self._criteria(item)
            keys = {c["key"] for c in criteria}
            self.values = {k: v for k, v in (earlier or {}).get("scores", {}).items() if k in keys}
            revising = (f"labelled before by {earlier['labeller']} at {earlier['labelled_at']}: change a score and "
                        "save to revise it (the latest label counts)") if earlier else ""
            what = "pair" if self.pairwise else "answer"
            self.view = {"done": False, "html": self._item_html(item), "criteria": criteria, "revising": revising,
                         "where": f"{what} {self.index + 1} of {len(self.items)} · sample {item[0].id if self.pairwise else item.id}"}
        self.status = status
        self._cover(self.view["html"] + "".join(c["title"] + c["description"] for c in self.view["criteria"])
                    + "".join(self.reopenable))

    def _criteria_text(self, item) -> str:
        return "".join(c["title"] + c["description"] for c in self._criteria(item))

    def _cover(self, text: str) -> None:
        """Cut the font anew only when `text` shows Korean the current cut lacks (a subset takes ~0.5 s): the
        queue's characters are cut once, up front, so moving through it costs no font work."""
        new = pages.characters(text) - self._characters
        if new or not self.fonts:
            self._characters |= new
            self.fonts = pages.scoped_style("".join(map(chr, sorted(self._characters))), SCOPE)

    def _reopen_text(self, key: tuple[str, str], label: dict[str, Any]) -> str:
        checkpoint, sample_id = key
        row = self._rows.get((checkpoint.partition(PAIR_SEPARATOR)[0], sample_id))
        answer = " ".join((row.output if row else "").split())
        answer = answer[:40] + ("…" if len(answer) > 40 else "")
        return f"sample {sample_id} · {label['labelled_at'][:16].replace('T', ' ')} · {answer}"

    # --- the front end ---
    def _on_labeller(self, change) -> None:
        if change["new"].strip():
            labels.remember_labeller(self.params.layout, change["new"].strip())

    def _on_message(self, _widget, content: dict, _buffers) -> None:
        action = content.get("action")
        if action == "save":
            if "labeller" in content:
                self.labeller = str(content["labeller"])
            self.values = dict(content.get("values", self.values))
            self.save()
        elif action == "back":
            self.back()
        elif action == "skip":
            self.skip()
        elif action == "reopen":
            self.reopen(int(content["position"]))


def widget(params: Params, n: int = 20, labeller: str = "", seed: int | None = None, order: str = "stratified"):
    """The labelling form (`LabelForm`), displayed: `n` answers (pairs in pairwise mode) drawn by `labels.sample` /
    `labels.sample_pairs` in `order`, blind to the checkpoint. `labeller` sets the name to label under (kept for
    the next run); '' keeps the remembered one."""
    from IPython.display import display

    pairwise_mode = params.judge.mode == "pairwise"
    items = labels.sample_pairs(params, n, seed, order) if pairwise_mode else labels.sample(params, n, seed, order)
    form = LabelForm(params, items, labeller=labeller, picked=order)
    display(form)
    return form
