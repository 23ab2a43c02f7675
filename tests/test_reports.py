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


@pytest.mark.slow
def test_score_report_works_offline_runs_no_model_output_and_draws_korean(outputs, tmp_path):
    import browser

    experiment(outputs)
    params = tmp_path / "hostile.yaml"
    params.write_text("experiment: hostile\n", encoding="utf-8")
    runner.run(params, stages=["score"])
    report = outputs / "hostile" / "reports" / "score.no-input.html"

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
