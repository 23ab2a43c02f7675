"""HTML reports: executed notebooks rendered with nbconvert, and `outputs/index.html`.

`render_notebook(nb, folder)` writes `<stage>.html` (code and outputs) and `<stage>.no-input.html`
(outputs only, for readers who want no code) into `folder` (a run's record). Figures are embedded as
data URIs by nbconvert; text outputs are escaped by it, so model output is never interpreted as HTML.
A report leads with its answer: the outputs of the cells tagged `lead` (the score's verdict, the infer and
judge summaries) are shown right under the notebook's title, without their code, before the parameters
and everything else; the executed notebook itself keeps its order.

`publish_latest(pages, reports_dir, stage)` copies a run's pages to `reports/` as the stage's latest
report, or removes the previous run's when this run rendered none (a report must not outlive its run).

`build_index()` lists every experiment under the outputs folder (those with a status.json) with each
stage's latest status (done / failed / running / not run, or any status a run records; a cluster job's
id and a link to its output under it), its run time,
a link to the latest report and the run history (every run's own report, newest first); it is rebuilt
before and after every stage. Headline numbers come from `<exp>/scores/headline.json` when the score
stage has written one.
"""

from __future__ import annotations

import functools
import html
import json
import re
from pathlib import Path
from urllib.parse import quote

from sftlab import pages, paths
from sftlab.stages import STAGES
from sftlab.files import atomic_copy, atomic_write_text


def render_notebook(notebook: Path, reports_dir: Path) -> list[Path]:
    import nbformat

    reports_dir.mkdir(parents=True, exist_ok=True)
    nb = lead_first(without_widgets(nbformat.read(notebook, as_version=4)))
    written = []
    exporter = _html_exporter()
    for suffix, exclude_input in ((".html", False), (".no-input.html", True)):
        # Read at each render, not compiled into the templates: one exporter serves both pages.
        exporter.exclude_input = exporter.exclude_input_prompt = exporter.exclude_output_prompt = exclude_input
        body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": notebook.stem}})
        target = reports_dir / f"{notebook.stem}{suffix}"
        atomic_write_text(target, pages.self_contained(body))
        written.append(target)
    return written


LEAD = "lead"


def lead_first(nb):
    """The notebook with its cells tagged `lead` that have outputs moved up, under the title (the first cell
    when it is Markdown): the report opens with the answer, the parameters and the work come after."""
    leads = [c for c in nb.cells if LEAD in c.get("metadata", {}).get("tags", []) and c.get("outputs")]
    if not leads:
        return nb
    rest = [c for c in nb.cells if not any(c is lead for lead in leads)]
    at = 1 if rest and rest[0].cell_type == "markdown" else 0
    nb.cells = rest[:at] + leads + rest[at:]
    return nb


@functools.lru_cache(maxsize=1)
def _html_exporter():
    """One nbconvert exporter per process: compiling its Jinja templates took half of a page's rendering (about
    2 s of the infer stage's two pages, profiled), and the runner renders every stage's pages."""
    from nbconvert import HTMLExporter
    from traitlets.config import Config

    # The code of the cells tagged `lead` is not shown: the report opens with their outputs.
    hide_lead_code = Config({"TagRemovePreprocessor": {"enabled": True, "remove_input_tags": {LEAD}}})
    return HTMLExporter(config=hide_lead_code)


WIDGET = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = "(an interactive widget: open the notebook in Jupyter to use it)"


def without_widgets(nb):
    """The notebook with its live widgets replaced by a line of text: a widget needs its renderer, which
    nbconvert's page would fetch from unpkg, and a progress bar or form means nothing in a report."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data") or {}
            if WIDGET in data:
                output["data"] = {"text/plain": WIDGET_NOTE}
    return nb


def publish_latest(pages: list[Path], reports_dir: Path, stage: str) -> None:
    """Copy a run's rendered pages into reports/ as the stage's latest; remove older pages it has no copy of."""
    reports_dir.mkdir(parents=True, exist_ok=True)
    for stale in (reports_dir / f"{stage}.html", reports_dir / f"{stage}.no-input.html"):
        if not any(page.name == stale.name for page in pages):
            stale.unlink(missing_ok=True)
    for page in pages:
        atomic_copy(page, reports_dir / page.name)


def _href(outputs: Path, target: Path) -> str:
    return html.escape(quote(target.relative_to(outputs).as_posix()))


def status_class(status: str) -> str:
    """The CSS class of a status: `done`, `failed`, `done with errors` -> `done-with-errors`."""
    return re.sub(r"[^a-z0-9]+", "-", status.lower()).strip("-") or "unknown"


def _history(outputs: Path, layout: paths.ExperimentLayout, stage: str, runs: list[dict]) -> str:
    items = []
    for run in reversed(runs):  # newest first
        name = run.get("run", "?")
        text = html.escape(Path(name).name)
        report = layout.root / name / f"{stage}.html"
        if "run" in run and report.exists():
            text = f'<a href="{_href(outputs, report)}">{text}</a>'
        detail = html.escape(run.get("status", "?")) + (f" · {run['seconds']:.0f} s" if "seconds" in run else "")
        items.append(f"<li>{text} {detail}</li>")
    return f'<details><summary>history ({len(runs)})</summary><ol>{"".join(items)}</ol></details>'


def _job(outputs: Path, layout: paths.ExperimentLayout, info: dict) -> str:
    """A cluster job's id and a link to its output (sftlab.executor), under the stage's status."""
    if not info.get("job_id"):
        return ""
    text = f"job {html.escape(str(info['job_id']))}"
    if info.get("requeued"):
        text += f" · requeued {int(info['requeued'])}x"
    log = layout.root / info["log"] if info.get("log") else None
    if log is not None and log.exists():
        text += f' · <a href="{_href(outputs, log)}">log</a>'
    return f'<div class="job">{text}</div>'


def _compared(layout: paths.ExperimentLayout) -> list[str]:
    """The experiments this one's score stage compares (`score.experiments` of its resolved params): a study."""
    import yaml

    try:
        resolved = yaml.safe_load(layout.resolved_params.read_text(encoding="utf-8")) or {}
        return [str(e) for e in (resolved.get("score") or {}).get("experiments") or []]
    except (OSError, yaml.YAMLError, AttributeError):
        return []


def _comparisons(outputs: Path, layout: paths.ExperimentLayout, studies: dict[str, list[str]]) -> str:
    """Links to the score reports that compare this experiment with others: its own when it is a study, and
    every study it is part of."""
    links = []
    for study, members in studies.items():
        if study == layout.experiment or layout.experiment in members:
            report = paths.ExperimentLayout(outputs / study).report("score")
            if report.exists():
                label = f"compares {len(members)}" if study == layout.experiment else f"compared in {study}"
                links.append(f'<a href="{_href(outputs, report)}">{html.escape(label)}</a>')
    return f'<div class="compare">{" · ".join(links)}</div>' if links else ""


def _experiment_rows(outputs: Path, stages: tuple[str, ...]) -> list[str]:
    rows = []
    layouts = [paths.ExperimentLayout(f.parent) for f in sorted(outputs.glob(f"*/{paths.STATUS_FILE}"))]
    studies = {layout.experiment: members for layout in layouts if (members := _compared(layout))}
    for status_file in sorted(outputs.glob(f"*/{paths.STATUS_FILE}")):
        layout = paths.ExperimentLayout(status_file.parent)
        try:
            status = json.loads(status_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            status = {"stages": {}}
        name = html.escape(layout.experiment)
        cells = [f'<td><a href="{_href(outputs, layout.resolved_params)}">{name}</a></td>']
        for stage in stages:
            info = status.get("stages", {}).get(stage)
            if not info:
                cells.append('<td class="not-run">not run</td>')
                continue
            state = info.get("status", "?")
            text = html.escape(state)
            if "seconds" in info:
                text += f" · {info['seconds']:.0f} s"
            report = layout.report(stage)
            if report.exists():
                text = f'<a href="{_href(outputs, report)}">{text}</a>'
            text += _job(outputs, layout, info)
            if info.get("history"):
                text += _history(outputs, layout, stage, info["history"])
            title = f' title="{html.escape(info["error"])}"' if info.get("error") else ""
            cells.append(f'<td class="{status_class(state)}"{title}>{text}</td>')
        cells.append(f'<td class="headline">{_latest_links(outputs, layout, status, stages)}{_problems(status, stages)}'
                     f"{_headline(layout)}{_comparisons(outputs, layout, studies)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return rows


COMPARE_ANCHOR = "Compare-two"  # nbconvert's id of the score notebook's "## Compare two" heading


def _latest_links(outputs: Path, layout: paths.ExperimentLayout, status: dict, stages: tuple[str, ...]) -> str:
    """Links to the experiment's latest report (the stage that ran last and left one) and to its comparison
    (the compare view of its score report)."""
    runs = [(info.get("started") or "", stage) for stage, info in (status.get("stages") or {}).items()
            if stage in stages and isinstance(info, dict) and layout.report(stage).exists()]
    links = []
    if runs:
        stage = max(runs)[1]
        links.append(f'<a href="{_href(outputs, layout.report(stage))}">latest report ({html.escape(stage)})</a>')
    score = layout.report("score")
    if score.exists():
        links.append(f'<a href="{_href(outputs, score)}#{COMPARE_ANCHOR}">comparison</a>')
    return f'<div class="links">{" · ".join(links)}</div>' if links else ""


def _problems(status: dict, stages: tuple[str, ...]) -> str:
    """What went wrong in each stage's latest run, first in the headline: a failed stage's error, or the
    problems a finished stage noted (e.g. "judge: 160/160 rows failed — connection failed: ...")."""
    lines = []
    for stage in stages:
        info = status.get("stages", {}).get(stage) or {}
        if info.get("status") == "failed" and info.get("error"):
            lines.append(f"{stage} failed: {info['error']}")
        lines += info.get("problems") or []
    return "".join(f'<div class="problem">{html.escape(shorten(line))}</div>' for line in lines)


def shorten(text: str, limit: int = 240) -> str:
    """One line of at most `limit` characters (runs of whitespace become one space)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _headline(layout: paths.ExperimentLayout) -> str:
    try:
        headline = json.loads((layout.scores / "headline.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return ""
    return "<br>".join(f"{html.escape(str(k))}: {html.escape(str(v))}" for k, v in headline.items())


def build_index(outputs: Path | None = None) -> Path:
    outputs = outputs or paths.outputs_root()
    outputs.mkdir(parents=True, exist_ok=True)
    header = "".join(f"<th>{s}</th>" for s in ("experiment", *STAGES, "headline"))
    rows = _experiment_rows(outputs, STAGES) or [f'<tr><td colspan="{len(STAGES) + 2}">no experiments yet</td></tr>']
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sftlab experiments</title>
<style>
body {{ font-family: system-ui, "Noto Sans KR", "Apple SD Gothic Neo", sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; }} th, td {{ border: 1px solid #ccc; padding: .3em .7em; text-align: left; }}
td {{ white-space: nowrap; vertical-align: top; }} details {{ font-size: .85em; }} ol {{ margin: .2em 0; }}
td.headline {{ white-space: normal; overflow-wrap: anywhere; min-width: 22em; max-width: 48em; }}
.links {{ margin-bottom: .3em; }}
.done {{ background: #e6f4e6; }} .failed {{ background: #fbe3e3; }} .running {{ background: #fff5d6; }}
.not-run {{ color: #999; }} .done-with-errors {{ background: #fde9cf; }}
.queued, .interrupted {{ background: #eef2fb; }} .cancelled {{ color: #999; background: #f3f3f3; }}
.job {{ font-size: .85em; color: #555; }}
.problem {{ color: #a40000; font-weight: bold; white-space: normal; max-width: 50em; }}
.compare {{ margin-top: .3em; font-size: .9em; }}
</style></head><body>
<h1>sftlab experiments</h1>
<table><tr>{header}</tr>
{chr(10).join(rows)}
</table></body></html>
"""
    target = outputs / "index.html"
    atomic_write_text(target, pages.self_contained(page))
    return target
