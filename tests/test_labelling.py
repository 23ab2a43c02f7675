"""Labelling by hand: the form (no default score, back/revise, skip, reopen, blind, the labeller remembered), the
orders it draws answers in, and — in a real JupyterLab driven by Chromium — the keyboard, a reload, and Korean
drawn by the embedded font in the form, the rubric and the label audit. Every label here is a synthetic fixture
made up by the test."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from sftlab import config, labels
from sftlab.judge.pairwise import PAIR_SEPARATOR

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "labelled"
QUESTIONS = ["대한민국의 수도는?", "가장 큰 바다는?", "한글을 만든 왕은?", "물의 끓는점은?", "지구의 위성은?"]
ANSWERS = ["서울입니다.", "태평양입니다.", "세종대왕입니다.", "섭씨 100도입니다.", "달입니다."]
CHECKPOINTS = ("base", "checkpoint-10", "checkpoint-20")
MARKS = {"base": "기본", "checkpoint-10": "열", "checkpoint-20": "스물"}  # in each answer, in place of the name


def write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def generation(checkpoint: str, number: int, output: str, finish_reason: str = "eos", seq_rep_4: float = 0.0) -> dict:
    return {"id": f"s{number}", "checkpoint": checkpoint,
            "prompt": [{"role": "user", "content": QUESTIONS[number]}], "reference": ANSWERS[number],
            "output": output, "n_tokens": 8, "finish_reason": finish_reason, "eos_terminated": finish_reason == "eos",
            "rep_2": 0.0, "rep_3": 0.0, "rep_4": 0.0, "seq_rep_4": seq_rep_4, "distinct_1": 1.0, "distinct_2": 1.0,
            "length_ratio": 1.0, "meta": {"lang": "ko", "category": "fact"}}


def experiment(outputs: Path, samples: int = 5) -> None:
    """Three checkpoints answering `samples` Korean questions; each answer carries a mark of its checkpoint (so a
    test can see that the answer is shown and the checkpoint's name is not)."""
    for checkpoint in CHECKPOINTS:
        write(outputs / EXPERIMENT / "generations" / f"{checkpoint}.jsonl",
              [generation(checkpoint, i, f"{ANSWERS[i]} ({MARKS[checkpoint]} 답)") for i in range(samples)])


def judgment(checkpoint: str, sample_id: str, scores: dict[str, int], repeat: int = 0) -> dict:
    return {"key": f"{checkpoint}-{sample_id}-{repeat}", "id": sample_id, "checkpoint": checkpoint,
            "status": "judged", "judge": {"backend": "openai", "model": "m", "rubric": "qa_ko"}, "scores": scores,
            "overall": (sum(scores.values()) / len(scores) - 1) / 4, "repeat": repeat}


def make_params(mode: str = "single"):
    return config.validate({"experiment": EXPERIMENT, "seed": 3, "judge": {"backend": "reference", "mode": mode}})


def everything(form, value: int | None = None) -> None:
    for criterion in form.view["criteria"]:
        form.choose(criterion["key"], criterion["options"][-1]["value"] if value is None else value)


def test_no_default_score_back_revises_skip_reopen_and_the_latest_label_wins(outputs):
    from sftlab.label_form import LabelForm

    experiment(outputs)
    params = make_params()
    form = LabelForm(params, labels.sample(params, n=4), labeller="synthetic-fixture")
    keys = [c["key"] for c in form.view["criteria"]]
    assert len(keys) == 6 and form.values == {}  # the Korean rubric's six criteria, all unset
    assert form.save() is False and "there is no default score" in form.status
    form.choose(keys[0], 4)
    assert form.save() is False and keys[1] in form.status
    assert not labels.labels_file(params.layout).exists()  # nothing unset was written

    everything(form, 4)
    assert form.save() and form.count == 1 and form.index == 1
    first = (form.items[0].checkpoint, form.items[0].id)
    form.skip()
    assert form.index == 2 and form.count == 1
    form.back()
    form.back()  # back to the first answer: its label is shown, to revise
    assert form.index == 0 and form.values == dict.fromkeys(keys, 4) and "labelled before" in form.view["revising"]
    form.choose(keys[0], 1)
    assert form.save() and form.count == 1  # a revision: still one answer labelled
    latest = labels.latest(params.layout)[first]
    assert latest["scores"][keys[0]] == 1 and latest["labeller"] == "synthetic-fixture"
    assert len(labels.labels_file(params.layout).read_text(encoding="utf-8").splitlines()) == 2  # append-only

    # reopen any labelled answer, even from a form that never showed it
    again = LabelForm(params, labels.sample(params, n=2))
    assert again.labeller == "synthetic-fixture"  # remembered for this login
    assert first not in {(r.checkpoint, r.id) for r in again.items}  # a new sample skips labelled answers
    assert len(again.reopenable) == 1
    again.reopen(0)
    assert (again.items[0].checkpoint, again.items[0].id) == first and again.values[keys[0]] == 1
    everything(again, 2)
    again.save()
    assert labels.latest(params.layout)[first]["scores"] == dict.fromkeys(keys, 2)
    assert labels.latest(params.layout)[first]["picked"] == "reopened"

    # Done at the end of the queue; back still works from there
    while again.index < len(again.items):
        again.skip()
    assert again.view["done"] and "Go back to revise" in again.view["html"]
    again.back()
    assert not again.view["done"]


def test_the_form_is_blind_to_the_checkpoint_and_shuffles_checkpoints(outputs):
    from sftlab.label_form import LabelForm

    experiment(outputs)
    params = make_params()
    picked = labels.sample(params, n=15)
    assert len(picked) == 15 and picked == labels.sample(params, n=15)  # seeded
    sequence = [row.checkpoint for row in picked]
    assert sequence != [CHECKPOINTS[i % 3] for i in range(15)]  # not the round robin's telling cycle
    assert [row.checkpoint for row in labels.sample(params, n=15, seed=99)] != sequence
    form = LabelForm(params, picked, labeller="synthetic-fixture")
    for _ in picked:
        shown = json.dumps(form.view, ensure_ascii=False)
        assert not [name for name in CHECKPOINTS if name in shown], shown
        assert any(f"({mark} 답)" in shown for mark in MARKS.values())  # the answer itself is shown
        form.skip()


def test_the_form_saves_pairs_blind_and_counts_them(outputs):
    from sftlab.label_form import LabelForm

    experiment(outputs, samples=2)
    params = make_params("pairwise")
    form = LabelForm(params, labels.sample_pairs(params, n=2), labeller="synthetic-fixture")
    assert form.unit == "pairs" and [o["label"] for o in form.view["criteria"][0]["options"]] == [
        "A>>B", "A>B", "A=B", "B>A", "B>>A"]
    assert "Answer B" in form.view["html"] and form.save() is False
    form.choose("verdict", -1)
    assert form.save() and form.count == 1
    [(key, row)] = labels.latest(params.layout).items()
    assert PAIR_SEPARATOR in key[0] and row["scores"] == {"verdict": -1}


def test_the_labeller_name_is_remembered_per_login(outputs):
    from sftlab.label_form import LabelForm

    experiment(outputs, samples=1)
    params = make_params()
    assert labels.remembered_labeller(params.layout) == ""
    form = LabelForm(params, labels.sample(params, n=1))
    assert form.labeller == "" and (everything(form) or form.save()) is False and "your name" in form.status
    form.labeller = "라벨러"
    assert LabelForm(params, []).labeller == "라벨러"
    assert json.loads((params.layout.labels / labels.LABELLERS_FILE).read_text(encoding="utf-8")) == {
        labels._login(): "라벨러"}


def test_disagreements_come_first(outputs):
    experiment(outputs)
    params = make_params()
    ok = dict.fromkeys(["accuracy", "completeness", "relevance", "fluency", "conciseness", "termination"], 3)
    judge = outputs / EXPERIMENT / "judge"
    for checkpoint in CHECKPOINTS:
        write(judge / f"{checkpoint}.jsonl", [judgment(checkpoint, f"s{i}", ok) for i in range(5)])
    # passes 2 points apart on one criterion (1 point apart elsewhere is noise, not a disagreement)
    write(judge / "base.jsonl", [judgment("base", "s1", {**ok, "accuracy": 5}, repeat=1),
                                 judgment("base", "s2", {**ok, "accuracy": 4}, repeat=1)])
    # judged good, yet it did not stop
    write(judge / "checkpoint-10.jsonl", [judgment("checkpoint-10", "s3", dict.fromkeys(ok, 5))])
    answers = outputs / EXPERIMENT / "generations" / "checkpoint-10.jsonl"
    answers.unlink()
    write(answers, [generation("checkpoint-10", i, "달 " * 50 if i == 3 else ANSWERS[i], finish_reason="length"
                               if i == 3 else "eos") for i in range(5)])
    # pairwise orders flipped on s4 (each order prefers the answer shown first)
    pairwise = judge / "pairwise"
    write(pairwise / "base~checkpoint-20.jsonl", [{**judgment("base~checkpoint-20", "s4", {"verdict": 1})}])
    write(pairwise / "checkpoint-20~base.jsonl", [{**judgment("checkpoint-20~base", "s4", {"verdict": 1})}])
    write(pairwise / "base~checkpoint-10.jsonl", [{**judgment("base~checkpoint-10", "s0", {"verdict": 1})}])
    write(pairwise / "checkpoint-10~base.jsonl", [{**judgment("checkpoint-10~base", "s0", {"verdict": -1})}])

    reasons = labels.disagreements(params)
    assert reasons[("base", "s1")] == ["judge passes disagree"]
    assert ("base", "s2") not in reasons
    assert reasons[("checkpoint-10", "s3")] == ["judged good, yet it did not stop or repeats itself"]
    assert reasons[("base", "s4")] == reasons[("checkpoint-20", "s4")] == ["pairwise orders flipped"]
    assert ("base", "s0") not in reasons  # both orders prefer base: consistent
    flagged = {("base", "s1"), ("checkpoint-10", "s3"), ("base", "s4"), ("checkpoint-20", "s4")}
    picked = labels.sample(params, n=6, order="disagreements")
    assert {(r.checkpoint, r.id) for r in picked[:4]} == flagged and len(picked) == 6
    pairs = labels.sample_pairs(make_params("pairwise"), n=3, order="disagreements")
    assert {pairs[0][0].checkpoint, pairs[0][1].checkpoint} == {"base", "checkpoint-20"} and pairs[0][0].id == "s4"
    with pytest.raises(ValueError, match="order: expected one of stratified, disagreements"):
        labels.sample(params, order="hardest")


# --------------------------------------------------------------------------------------------
# In a real JupyterLab, driven by Chromium
# --------------------------------------------------------------------------------------------

NOTEBOOK = [
    # the form, as notebooks/judge.ipynb shows it
    "from sftlab import config, label_form\n"
    f"params = config.validate({{'experiment': '{EXPERIMENT}', 'seed': 3, 'judge': {{'backend': 'reference'}}}})\n"
    "form = label_form.widget(params, n=4)",
    # the rubric, as the judge notebook shows it
    "from sftlab.judge import rubric, views\n"
    f"views.rubric_view(rubric.load_rubric({str(ROOT / 'params' / 'rubrics' / 'qa_ko.yaml')!r}), 'qa_ko')",
    # a label audit, as the train notebook shows it (display(HTML(label_audit.html)))
    "from IPython.display import HTML\n"
    "from sftlab.train.audit import AuditedRow, LabelAudit, render_html\n"
    "row = AuditedRow(pieces=['질문', '서울입니다', '<|im_end|>'], token_ids=[1, 2, 3], supervised=[False, True, True],"
    " answer_ends=[2])\n"
    "HTML(render_html(LabelAudit('<|im_end|>', 3, '<|im_end|>', [row], answer_ends=1, answer_ends_supervised=1)))",
]


def korean_font_installed() -> bool:
    from test_reports import korean_font_installed as installed

    return installed()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """One JupyterLab for the module, serving a notebook of the three views, over a fresh experiment."""
    import nbformat

    import browser

    browser.chromium()  # skip early without Chromium
    root = tmp_path_factory.mktemp("lab")
    outputs = root.parent / f"{root.name}-outputs"
    experiment(outputs)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in NOTEBOOK])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, root / "label.ipynb")
    with browser.jupyter_lab(root, {"SFTLAB_OUTPUTS": str(outputs)}) as server:
        server.outputs = outputs
        yield server


def run_all(page, timeout_s: float = 240) -> None:
    """Once the notebook's kernel is idle (accepting JupyterLab's kernel choice if it asks), run every cell of the
    open notebook and wait for the form."""
    deadline = time.monotonic() + timeout_s
    page.wait_for_function("window.jupyterapp && document.querySelector('.jp-Notebook .jp-Cell')")
    while "| Idle" not in page.locator(".jp-StatusBar-Widget").all_inner_texts().__str__():
        accept = page.locator(".jp-Dialog button.jp-mod-accept")
        if accept.count():
            accept.first.click()
        assert time.monotonic() < deadline, "the notebook's kernel did not start"
        page.wait_for_timeout(500)
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")  # not awaited: it
    # resolves only once every cell ran
    page.locator(".sftlab-label-form .sftlab-criterion").first.wait_for(timeout=(deadline - time.monotonic()) * 1000)


def label_rows(lab) -> list[dict]:
    path = lab.outputs / EXPERIMENT / "labels" / labels.LABELS_FILE
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


@pytest.mark.slow
def test_label_by_keyboard_revise_reload_and_the_name_is_kept(lab):
    import browser

    with browser.browse(lab.notebook_url("label.ipynb")) as seen:
        page = seen.page
        run_all(page)
        form = page.locator(".sftlab-label-form")
        save = form.locator("button.sftlab-save")
        count = form.locator(".sftlab-count")
        criteria = form.locator(".sftlab-criterion")
        assert criteria.count() == 6 and count.inner_text() == "0 answers labelled so far"
        # no default score: nothing set, nothing saved — by Enter or by the button
        form.locator("input.sftlab-labeller").fill("tester")
        form.locator("input.sftlab-labeller").press("Enter")  # the name is kept; focus moves to the first criterion
        assert save.is_disabled()
        page.keyboard.press("Enter")
        for digit in "45432":  # five of six criteria
            page.keyboard.press(digit)
        page.keyboard.press("Enter")
        page.wait_for_timeout(500)
        assert save.is_disabled() and label_rows(lab) == []
        assert form.locator(".sftlab-criterion.sftlab-unset").count() == 1

        page.keyboard.press("3")  # the sixth: now Enter saves
        assert save.is_enabled()
        page.keyboard.press("Enter")
        count.filter(has_text="1 answers labelled so far").wait_for()
        shown = []
        for number in (2, 3):  # two more, by keyboard only
            form.locator(".sftlab-where", has_text=f"answer {number} of 4").wait_for()
            shown.append(form.locator(".sftlab-item").inner_text())
            for digit in "123451":
                page.keyboard.press(digit)
            page.keyboard.press("Enter")
            count.filter(has_text=f"{number} answers labelled so far").wait_for()
        rows = label_rows(lab)
        assert len(rows) == 3 and {r["labeller"] for r in rows} == {"tester"}
        assert rows[0]["scores"] == dict(zip(["accuracy", "completeness", "relevance", "fluency", "conciseness",
                                              "termination"], [4, 5, 4, 3, 2, 3]))
        assert rows[2]["scores"]["accuracy"] == 1
        # the page shows no checkpoint name
        assert not [name for name in CHECKPOINTS if name in form.inner_text()]

        # back to the third and revise it: the form shows its label, a new row is appended, the latest wins
        page.keyboard.press("ArrowLeft")
        form.locator(".sftlab-revising", has_text="labelled before by tester").wait_for()
        assert form.locator(".sftlab-item").inner_text() == shown[1]
        assert form.locator(".sftlab-criterion.sftlab-unset").count() == 0
        page.keyboard.press("5")  # the first criterion is focused
        page.keyboard.press("Enter")
        form.locator(".sftlab-where", has_text="answer 4 of 4").wait_for()
        rows = label_rows(lab)
        assert len(rows) == 4 and (rows[3]["id"], rows[3]["checkpoint"]) == (rows[2]["id"], rows[2]["checkpoint"])
        assert rows[3]["scores"]["accuracy"] == 5 and count.inner_text() == "3 answers labelled so far"
        # the notebook's own shortcuts never fired: still one cell per source, none turned into Markdown
        assert page.locator(".jp-Notebook .jp-Cell").count() == len(NOTEBOOK)
        assert page.locator(".jp-Notebook .jp-MarkdownCell").count() == 0

        # reload the page and run the cell again: the name is kept, the count goes on
        page.reload()
        run_all(page)
        form = page.locator(".sftlab-label-form")
        assert form.locator("input.sftlab-labeller").input_value() == "tester"
        assert form.locator(".sftlab-count").inner_text() == "3 answers labelled so far"
        assert form.locator("select option").count() == 1 + 3  # three labelled answers to reopen
        assert seen.remote_requests == [] and seen.errors == []


@pytest.mark.slow
def test_korean_in_the_form_the_rubric_and_the_audit_is_drawn_by_the_embedded_font(lab):
    import browser

    with browser.browse(lab.notebook_url("label.ipynb")) as seen:
        page = seen.page
        run_all(page)
        page.wait_for_selector(".sftlab-rubric td", timeout=60_000)
        page.wait_for_selector(".sftlab-audit .loss", timeout=60_000)
        page.evaluate("document.fonts.ready.then(() => true)")
        probes = {"form": ".sftlab-label-form .sftlab-item .sftlab-text",
                  "criterion": ".sftlab-label-form .sftlab-criterion .sftlab-name",
                  "rubric table": ".sftlab-rubric td", "system prompt": ".sftlab-rubric pre",
                  "audit": ".sftlab-audit .row span.loss"}
        drawn = {}
        for name, selector in probes.items():
            element = page.locator(selector).filter(has_text="정확성").first if name == "rubric table" else \
                page.locator(selector).first
            assert any("\uac00" <= ch <= "\ud7a3" for ch in element.inner_text()), (name, element.inner_text())
            element.evaluate(f"e => e.id = 'probe-{name.replace(' ', '-')}'")
            drawn[name] = seen.fonts_of(f"#probe-{name.replace(' ', '-')}")
        # the same Korean in JupyterLab's page outside any sftlab box: no custom font draws it
        page.evaluate("document.body.insertAdjacentHTML('beforeend', '<p id=\"bare\">서울입니다</p>')")
        bare = seen.fonts_of("#bare")
    if korean_font_installed():
        pytest.skip("this machine has a Korean font of its own: the embedded font is not needed to draw Korean")
    assert not any(f["isCustomFont"] for f in bare), bare
    for name, fonts in drawn.items():
        assert any(f["isCustomFont"] for f in fonts), (name, fonts)
