"""Reports a person reads: self-contained pages, the per-sample explorer, the compare view, Korean that renders
without system fonts, hostile model output that stays text. The browser tests open real reports in headless
Chromium with the network off (tests/browser.py)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from sftlab import explorer, pages, reports, runner

HOSTILE = ['<script>window.__pwned = "script"</script>', '<img src="x" onerror="window.__pwned = \'img\'">']
KOREAN = "서울은 대한민국의 수도입니다."


def write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def experiment(outputs: Path, name: str = "hostile") -> None:
    """base and checkpoint-10 on six samples: checkpoint-10 gains most on s3; two answers are hostile HTML."""
    for checkpoint, answers, overall in (
            ("base", [KOREAN, *HOSTILE, "짧다", "답 " * 400, "x"], [0.5, 0.5, 0.5, 0.1, 0.5, 0.5]),
            ("checkpoint-10", [KOREAN, "fine", "fine", "훨씬 낫다", "답", "x"], [0.5, 0.6, 0.4, 0.9, 0.7, 0.5])):
        ids = [f"s{i}" for i in range(len(answers))]
        write(outputs / name / "generations" / f"{checkpoint}.jsonl", [
            {"id": i, "checkpoint": checkpoint, "prompt": [{"role": "user", "content": "대한민국의 수도는?"}],
             "reference": "서울", "output": a, "n_tokens": 400 if len(a) > 500 else 5,
             "finish_reason": "length" if len(a) > 500 else "eos", "eos_terminated": len(a) <= 500,
             "rep_2": 0.0, "rep_3": 0.0, "rep_4": 0.0, "seq_rep_4": 0.0, "distinct_1": 1.0, "distinct_2": 1.0,
             "length_ratio": 1.0, "meta": {"lang": "ko" if k % 2 == 0 else "en", "category": "capital"}}
            for k, (i, a) in enumerate(zip(ids, answers))])
        write(outputs / name / "judge" / f"{checkpoint}.jsonl", [
            {"key": f"{checkpoint}-{i}", "id": i, "checkpoint": checkpoint, "status": "judged",
             "judge": {"backend": "reference", "model": "reference", "rubric": "qa_ko"},
             "scores": {"정확성": round(1 + o * 4)}, "reasons": {"정확성": f"이유 {HOSTILE[0]}"}, "overall": o,
             "cost_usd": 0.0, "meta": {}} for i, o in zip(ids, overall)])


def test_self_contained_pages_load_nothing_remote_and_carry_only_the_korean_they_show():
    page = ('<html><head><script src="https://cdnjs.cloudflare.com/require.min.js"></script>'
            "<script type=\"module\">const m = (await import(\"https://cdnjs.cloudflare.com/m.mjs\")).default;</script>"
            '<link rel="stylesheet" href="//unpkg.com/x.css"><script>var local = 1;</script></head>'
            f"<body><p>{KOREAN}</p><script>var data = \"\\ud55c\";</script></body></html>")
    result = pages.self_contained(page)
    assert pages.remote_resources(page) and not pages.remote_resources(result)
    assert "var local = 1" in result  # inline scripts stay
    assert set(map(chr, pages.characters(result))) == set(KOREAN.replace(" ", "").replace(".", "")) | {"한"}
    font = re.search(r"base64,([A-Za-z0-9+/=]+)", result).group(1)
    assert len(font) < 60_000, "a cut-down font, not the 4.7 MB file"
    assert pages.self_contained(result) == result  # applied once
    plain = pages.self_contained("<html><head></head><body>no Korean here</body></html>")
    assert "@font-face" not in plain and pages.TEXT_STACK in plain


def test_explorer_cells_are_escaped_and_long_answers_fold():
    frame = pd.DataFrame({"checkpoint": ["base"] * 3, "id": ["a", "b", "c"],
                          "prompt": [[{"role": "user", "content": "q"}]] * 3, "output": [*HOSTILE, "답 " * 200],
                          "reference": ["r"] * 3, "finish_reason": ["eos", "eos", "length"], "n_tokens": [1, 2, 3]})
    table = explorer.generations(frame)
    assert "<script>window.__pwned" not in table and "<img src" not in table
    assert "&lt;script&gt;" in table and "&lt;img src=" in table
    assert "<details>" in table and "(400 characters)" in table
    assert '"searchPanes"' in table or "searchPanes" in table
    # As text (what papermill logs into the terminal of `sftlab run`): one line, no markup.
    from IPython.lib.pretty import pretty

    assert pretty(table) == repr(table) == "[interactive table of 3 rows (in the notebook and its HTML report)]"


def test_compare_puts_the_largest_score_difference_first(outputs):
    from sftlab.score.samples import per_sample

    experiment(outputs)
    samples = per_sample(["hostile"])
    frame = explorer.compare_frame(samples, "base", "checkpoint-10")
    assert list(frame["id"][:2]) == ["s3", "s4"]  # +0.8, then +0.2 (and s1 +0.1, s2 -0.1 below)
    assert frame["Δ overall"].iloc[0] == pytest.approx(0.8)
    assert frame["B answer"].iloc[0] == "훨씬 낫다" and "이유" in frame["A reasons"].iloc[0]
    assert explorer.default_pair(samples) == ("base", "checkpoint-10")
    # pairwise verdicts (from the side of the pair's first model in sorted order: "base") join from B's side
    outcomes = pd.DataFrame({"id": ["s0", "s5"], "a": ["base"] * 2, "b": ["checkpoint-10"] * 2, "x": [-3.0, 0.0],
                             "flip": [False, True]})
    joined = explorer.compare_frame(samples, "base", "checkpoint-10", outcomes).set_index("id")
    assert joined.loc["s0", "pairwise (B's side)"] == 3.0 and joined.loc["s5", "flip"]
    assert explorer.compare_frame(samples, "checkpoint-10", "base", outcomes).set_index("id").loc[
        "s0", "pairwise (B's side)"] == -3.0
    with pytest.raises(KeyError, match="no samples of 'checkpoint-99'"):
        explorer.compare_frame(samples, "base", "checkpoint-99")


def korean_font_installed() -> bool:
    try:
        return bool(subprocess.run(["fc-list", ":lang=ko"], capture_output=True, text=True).stdout.strip())
    except FileNotFoundError:
        return False


@pytest.fixture(scope="module")
def scored(tmp_path_factory) -> Path:
    """The outputs folder of `experiment()` after one real score run (papermill, nbconvert): its reports are
    read by several tests."""
    folder = tmp_path_factory.mktemp("scored") / "outputs"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SFTLAB_OUTPUTS", str(folder))
        experiment(folder)
        params = folder.parent / "hostile.yaml"
        params.write_text("experiment: hostile\n", encoding="utf-8")
        runner.run(params, stages=["score"])
    return folder


@pytest.mark.slow
def test_score_report_works_offline_runs_no_model_output_and_draws_korean(scored, tmp_path):
    import browser

    report = scored / "hostile" / "reports" / "score.no-input.html"

    with browser.visit(report) as seen:
        assert seen.remote_requests == []
        assert seen.page.evaluate("window.__pwned") is None, "model output ran as a script"
        assert seen.errors == []
        # the explorer and the compare view are live DataTables holding the hostile answers as text
        tables = seen.page.locator("table.sftlab-explorer.dataTable")
        assert tables.count() == 2
        explorer_table = tables.first
        assert HOSTILE[1] in explorer_table.inner_text() and HOSTILE[0] in explorer_table.inner_text()
        assert explorer_table.locator("img").count() == 0
        search = seen.page.locator(".dt-search input").first
        search.fill("훨씬")
        seen.page.wait_for_timeout(300)
        assert explorer_table.locator("tbody tr").count() == 1
        assert "훨씬 낫다" in explorer_table.locator("tbody tr").first.inner_text()
        # the compare view starts with the largest gain (s3: +0.8)
        first = tables.nth(1).locator("tbody tr").first.inner_text()
        assert first.startswith("s3") and "0.8" in first
        # Korean is drawn with a real font: the embedded one, where the machine has none of its own
        seen.page.evaluate("document.querySelector('h1').id = 'heading'")
        seen.page.evaluate(f"document.body.insertAdjacentHTML('beforeend', '<p id=\"probe\">{KOREAN}</p>')")
        fonts = seen.fonts_of("#probe")
    drawn_by = {f["familyName"]: f["isCustomFont"] for f in fonts}
    if not korean_font_installed():
        assert any(drawn_by.values()), f"Korean drawn only by system fonts without Hangul: {drawn_by}"

    # the same page without its embedded font: nothing custom draws the Korean (so the check above can fail)
    bare = tmp_path / "bare.html"
    bare.write_text(re.sub(r'<style id="sftlab-fonts">.*?</style>', "", report.read_text(encoding="utf-8"),
                           flags=re.S), encoding="utf-8")
    with browser.visit(bare, wait_ms=500) as seen:
        seen.page.evaluate(f"document.body.insertAdjacentHTML('beforeend', '<p id=\"probe\">{KOREAN}</p>')")
        assert not any(f["isCustomFont"] for f in seen.fonts_of("#probe"))


@pytest.mark.slow
def test_rendered_notebook_pages_have_no_network_and_no_widgets(outputs, tmp_path):
    import nbformat

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("progress")
    cell.outputs = [nbformat.v4.new_output("display_data", data={
        "application/vnd.jupyter.widget-view+json": {"model_id": "abc", "version_major": 2, "version_minor": 0},
        "text/plain": "HBox(children=(...))"})]
    nb.cells = [cell, nbformat.v4.new_markdown_cell(f"## {KOREAN}")]
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}, "version_major": 2}}
    source = tmp_path / "page.ipynb"
    nbformat.write(nb, source)
    for page in reports.render_notebook(source, tmp_path / "out"):
        text = page.read_text(encoding="utf-8")
        assert pages.remote_resources(text) == [] and "unpkg" not in text and "cdnjs" not in text
        assert reports.WIDGET_NOTE in text and "@font-face" in text
        assert oct(page.stat().st_mode & 0o777) != oct(0o600)


@pytest.mark.slow
def test_an_explorer_table_draws_its_korean_without_the_page_font(tmp_path):
    """In Jupyter the page is JupyterLab's, not ours: a table must carry the Korean font it needs itself."""
    import browser
    import itables
    from itables.javascript import generate_init_offline_itables_html

    frame = pd.DataFrame({"checkpoint": ["base"], "id": ["a"], "prompt": [[{"role": "user", "content": KOREAN}]],
                          "output": ["답입니다"], "reference": ["답"], "finish_reason": ["eos"], "n_tokens": [3]})
    page = tmp_path / "jupyter-like.html"
    page.write_text("<!doctype html><html><head><meta charset='utf-8'></head><body>"
                    + generate_init_offline_itables_html(itables.options.dt_bundle)
                    + explorer.generations(frame) + "</body></html>", encoding="utf-8")
    assert 'id="sftlab-fonts"' not in page.read_text(encoding="utf-8")  # no page-level font
    with browser.visit(page) as seen:
        seen.page.locator("table.sftlab-explorer.dataTable td", has_text="답입니다").first.evaluate(
            "e => e.id = 'probe'")
        fonts = seen.fonts_of("#probe")
    if not korean_font_installed():
        assert any(f["isCustomFont"] for f in fonts), fonts


@pytest.mark.slow
@pytest.mark.parametrize("page", ["score.no-input.html", "score.html"])
def test_score_report_first_screen_shows_the_verdict_before_any_table(scored, tmp_path, page):
    """At 1300×900 the headline, the ranking figure and the card's line are above the fold, before the
    parameters and every other table; the screenshot is what the docs show."""
    import browser

    report = scored / "hostile" / "reports" / page
    with browser.visit(report, viewport=(1300, 900)) as seen:
        boxes = {name: seen.page.locator(selector).first.bounding_box() for name, selector in (
            ("headline", ".sftlab-verdict .sftlab-headline"), ("ranking", ".sftlab-verdict img.sftlab-ranking"),
            ("card", ".sftlab-verdict .sftlab-card"))}
        first_table = seen.page.evaluate("""() => {
            const tables = [...document.querySelectorAll('table')];
            return tables.length ? tables[0].closest('.sftlab-verdict') !== null : null; }""")
        headline = seen.page.locator(".sftlab-headline").first.inner_text()
        image = tmp_path / f"{page}.png"
        seen.page.screenshot(path=str(image))
    for name, box in boxes.items():
        assert box is not None, f"no {name} on the page"
        assert box["height"] > 0 and 0 <= box["y"] and box["y"] + box["height"] <= 900, f"{name} below the fold: {box}"
    assert boxes["ranking"]["height"] > 100, "the figure is drawn, not a broken image"
    assert first_table, "a table comes before the verdict"
    # the headline follows the written differences: checkpoint-10 against base, better only if the interval says so
    overall = pd.read_csv(scored / "hostile" / "scores" / "differences.csv").query("metric == 'overall'").iloc[0]
    expected = ("checkpoint-10 is better than the baseline base" if overall["low"] > 0 else
                "No model is measurably better than the baseline base; the best is checkpoint-10")
    assert headline.startswith(expected) and f"{overall['difference']:+.3f}" in headline
    assert image.stat().st_size > 10_000


def test_verdict_names_a_winner_only_when_the_interval_excludes_zero():
    from sftlab.score import views as score_views
    from sftlab.score.stage import Summary

    summary = pd.DataFrame({"experiment": ["e", "e"], "checkpoint": ["base", "checkpoint-9"], "step": [-1, 9],
                            "overall": [0.4, 0.7], "overall_low": [0.35, 0.66], "overall_high": [0.45, 0.74]})
    differences = pd.DataFrame({"experiment": ["e"], "checkpoint": ["checkpoint-9"], "step": [9], "metric": ["overall"],
                                "n_pairs": [40], "difference": [0.3], "low": [0.24], "high": [0.36],
                                "baseline": ["e/base"]})
    card = {"trustworthy": True, "experiments": {"e": {"judge": ["reference:reference"], "unscored_share":
            {"estimate": 0.0, "n": 80}, "length_preference": {"spearman_rho": -0.3, "low": -0.5, "high": -0.1, "n": 80}}}}
    block = score_views.verdict(Summary(tables={"summary": summary, "differences": differences}, reliability=card,
                                        judge_failures={"e": "judge: 2/80 rows failed — refused"}))
    lines = repr(block).splitlines()
    assert lines[0] == ("checkpoint-9 is better than the baseline base: overall 0.700 [0.660, 0.740], "
                        "+0.300 [0.240, 0.360] against the baseline over 40 paired samples (the interval excludes 0).")
    assert lines[1].startswith("⚠ e — judge: 2/80 rows failed") and "length ρ -0.30" in lines[2]
    html_text = block._repr_html_()
    order = [html_text.index(f'class="{name}') for name in ("sftlab-headline", "sftlab-failure", "sftlab-card",
                                                              "sftlab-ranking", "sftlab-table sftlab-differences")]
    assert order == sorted(order)
    # the same gain with an interval through 0 names nobody; a distrusted judge names nobody either
    differences["low"] = -0.02
    unsure = score_views.headline_sentence({"summary": summary, "differences": differences}, card)
    assert unsure.startswith("No model is measurably better than the baseline base")
    distrusted = score_views.headline_sentence({"summary": summary, "differences": differences},
                                               {**card, "trustworthy": False, "warning": "α 0.41 < 0.8"})
    assert distrusted.startswith("No winner named: α 0.41 < 0.8.")
    # pairwise: the ranking decides, and overlapping intervals name no winner
    ranking = pd.DataFrame({"model": ["checkpoint-9", "base"], "score": [1080.0, 1000.0], "low": [1040.0, 1000.0],
                            "high": [1120.0, 1000.0], "rank": [1, 2], "separable": [True, None]})
    versus = pd.DataFrame({"model": ["checkpoint-9"], "baseline": ["base"], "n": [40], "win_rate": [0.7],
                           "win_rate_low": [0.6], "win_rate_high": [0.8], "lc_win_rate": [0.66], "flip_rate": [0.05]})
    pair_tables = {"summary": summary, "differences": differences, "ranking": ranking, "pairwise": versus}
    assert score_views.headline_sentence(pair_tables, card) == (
        "checkpoint-9 ranks first (Bradley–Terry 1080 [1040, 1120]), separable from the next. Against the baseline "
        "base it wins 70.0% [60.0%, 80.0%] of 40 prompts (ties count half).")
    assert "66.0%" in score_views.differences_table(pair_tables).html
    ranking.loc[0, "separable"] = False
    assert score_views.headline_sentence(pair_tables, card).startswith(
        "No winner: checkpoint-9 (1080 [1040, 1120]) and base are not separable")


def test_report_tables_have_no_index_sensible_precision_and_scroll():
    from sftlab import tables

    frame = pd.DataFrame({"n": [40, 7], "judged": [40.0, float("nan")], "rate": [0.123456, 1.0],
                          "tokens": [123.456, 98.0], "answer": ["<b>bold</b>", "답"]},
                         index=pd.Index(["base", "checkpoint-10"], name="checkpoint"))
    block = tables.table(frame, groups={"rows": ["n", "judged"]})
    text = block._repr_html_()
    cells = re.findall(r"<td[^>]*>(.*?)</td>", text)
    assert cells[:6] == ["base", "40", "40", "0.123", "123.5", "&lt;b&gt;bold&lt;/b&gt;"]
    assert cells[6:10] == ["checkpoint-10", "7", tables.MISSING, "1.000"]
    assert '<th colspan="2" class="group">rows</th>' in text and "overflow-x: auto" in text
    assert re.findall(r"<th>(.*?)</th>", text)[:2] == ["checkpoint", "n"]  # a named index is a column, no bare index
    assert "sftlab-ko-" in text  # carries its Korean font for Jupyter
    assert tables.interval(0.5, 0.41, 0.6, percent=True) == "50.0% [41.0%, 60.0%]"
    assert tables.interval(0.25, -0.1, 0.6, signed=True) == "+0.250 [-0.100, 0.600]"


@pytest.mark.slow
def test_index_headline_wraps_and_links_the_latest_report_and_the_comparison(scored):
    index = (scored / "index.html").read_text(encoding="utf-8")
    cell = re.search(r'<td class="headline">(.*?)</td>', index, re.S).group(1)
    assert '<a href="hostile/reports/score.html">latest report (score)</a>' in cell
    assert f'<a href="hostile/reports/score.html#{reports.COMPARE_ANCHOR}">comparison</a>' in cell
    assert f'id="{reports.COMPARE_ANCHOR}"' in (scored / "hostile" / "reports" / "score.html").read_text(encoding="utf-8")
    assert re.search(r"td\.headline \{[^}]*white-space: normal", index)


@pytest.mark.slow
def test_a_report_opens_with_its_lead_cells_under_the_title(tmp_path):
    import nbformat

    nb = nbformat.v4.new_notebook()
    title = nbformat.v4.new_markdown_cell("# Infer")
    parameters = nbformat.v4.new_code_cell("params_file = 'x'", metadata={"tags": ["parameters"]})
    work = nbformat.v4.new_code_cell("print('working')")
    work.outputs = [nbformat.v4.new_output("stream", name="stdout", text="working\n")]
    lead = nbformat.v4.new_code_cell("display(summary_of_the_run)", metadata={"tags": ["lead"]})
    lead.outputs = [nbformat.v4.new_output("display_data", data={"text/html": "<p id='answer'>160 answers</p>",
                                                                 "text/plain": "160 answers"})]
    empty_lead = nbformat.v4.new_code_cell("never_ran()", metadata={"tags": ["lead"]})
    nb.cells = [title, parameters, work, lead, empty_lead]
    source = tmp_path / "infer.ipynb"
    nbformat.write(nb, source)
    full, plain = reports.render_notebook(source, tmp_path / "out")
    for page in (full, plain):
        text = page.read_text(encoding="utf-8")
        assert text.index("<h1") < text.index('<p id="answer">') < text.index("working")
    full_text = full.read_text(encoding="utf-8")
    assert "summary_of_the_run" not in full_text, "the lead cell's code is left out, its output leads"
    assert "celltag_parameters" in full_text  # the rest keeps its code and its place; a lead that never ran stays
    assert full_text.index("celltag_parameters") < full_text.index("working") < full_text.rindex("celltag_lead")
    assert [c.source for c in nbformat.read(source, as_version=4).cells][3] == "display(summary_of_the_run)"


def test_infer_and_judge_summaries_say_rows_failures_and_cost():
    from sftlab.infer import views as infer_views
    from sftlab.infer.stage import Summary as InferSummary
    from sftlab.judge import views as judge_views
    from sftlab.judge.stage import Summary as JudgeSummary

    generations = pd.DataFrame({"checkpoint": ["base", "base", "checkpoint-5", "checkpoint-5"], "id": ["a", "b"] * 2,
                                "eos_terminated": [True, True, True, False],
                                "finish_reason": ["eos", "eos", "eos", "length"]})
    text = repr(infer_views.summary(generations, InferSummary(generated={"checkpoint-5": 2}, seconds={"checkpoint-5": 4.0},
                                                              tokens={"checkpoint-5": 130})))
    assert text.startswith("4 answers: 2 models (base, checkpoint-5) × 2 test samples.")
    assert "base 100%, checkpoint-5 50%" in text and "⚠ 1 of 4 answers were cut at infer.max_new_tokens (checkpoint-5: 1)" in text
    assert "This run generated 2 answers in 4 s (130 tokens, 32.5 tokens/s)" in text
    assert "color:#a40000" in infer_views.summary(generations)._repr_html_()

    judgments = pd.DataFrame({"checkpoint": ["base", "checkpoint-5", "checkpoint-5"], "status": ["judged", "judged", "error"],
                              "overall": [0.5, 0.75, None]})
    run = JudgeSummary(backend="openai", model="m", rows=3, judged=2, errors=1, requests=4, cost_usd=0.0123, seconds=2.5,
                       error_counts={"the judge refused": 1})
    text = repr(judge_views.summary(judgments, run))
    assert text.startswith("Judge: openai (m). 3 judgments of 2 models: 2 scored, 1 failed, 0 not judged.")
    assert "⚠ judge: 1/3 rows failed — the judge refused" in text
    assert "Mean overall score (0–1): base 0.500, checkpoint-5 0.750." in text and "cost $0.0123" in text
