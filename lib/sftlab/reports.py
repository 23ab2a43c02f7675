"""HTML reports: executed notebooks rendered with nbconvert, and `outputs/index.html`.

`render_notebook(nb, reports_dir)` writes `<stage>.html` (code and outputs) and
`<stage>.no-input.html` (outputs only, for readers who want no code). Figures are embedded as
data URIs by nbconvert; text outputs are escaped by it, so model output is never interpreted as HTML.

`build_index()` lists every experiment under the outputs folder with each stage's status
(done / failed / running / not run), its run time and links; it is rebuilt after every stage.
Headline numbers come from `<exp>/scores/headline.json` when the score stage has written one.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from sftlab import paths
from sftlab.config import atomic_write_text


def render_notebook(notebook: Path, reports_dir: Path) -> list[Path]:
    import nbformat
    from nbconvert import HTMLExporter

    reports_dir.mkdir(parents=True, exist_ok=True)
    nb = nbformat.read(notebook, as_version=4)
    written = []
    for suffix, exclude_input in ((".html", False), (".no-input.html", True)):
        exporter = HTMLExporter(exclude_input=exclude_input, exclude_input_prompt=exclude_input,
                                exclude_output_prompt=exclude_input)
        body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": notebook.stem}})
        target = reports_dir / f"{notebook.stem}{suffix}"
        atomic_write_text(target, body)
        written.append(target)
    return written


def _experiment_rows(outputs: Path, stages: tuple[str, ...]) -> list[str]:
    rows = []
    for status_file in sorted(outputs.glob("*/status.json")):
        exp_dir = status_file.parent
        try:
            status = json.loads(status_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            status = {"stages": {}}
        cells = [f'<td><a href="{html.escape(exp_dir.name)}/config.resolved.yaml">{html.escape(exp_dir.name)}</a></td>']
        for stage in stages:
            info = status.get("stages", {}).get(stage)
            if not info:
                cells.append('<td class="not-run">not run</td>')
                continue
            state = info.get("status", "?")
            text = html.escape(state)
            if "seconds" in info:
                text += f" · {info['seconds']:.0f} s"
            report = exp_dir / "reports" / f"{stage}.html"
            if report.exists():
                text = f'<a href="{html.escape(exp_dir.name)}/reports/{stage}.html">{text}</a>'
            title = f' title="{html.escape(info["error"])}"' if info.get("error") else ""
            cells.append(f'<td class="{html.escape(state)}"{title}>{text}</td>')
        cells.append(f"<td>{_headline(exp_dir)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return rows


def _headline(exp_dir: Path) -> str:
    try:
        headline = json.loads((exp_dir / "scores" / "headline.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return ""
    return "<br>".join(f"{html.escape(str(k))}: {html.escape(str(v))}" for k, v in headline.items())


def build_index(outputs: Path | None = None) -> Path:
    from sftlab.runner import STAGES

    outputs = outputs or paths.outputs_root()
    outputs.mkdir(parents=True, exist_ok=True)
    header = "".join(f"<th>{s}</th>" for s in ("experiment", *STAGES, "headline"))
    rows = _experiment_rows(outputs, STAGES) or [f'<tr><td colspan="{len(STAGES) + 2}">no experiments yet</td></tr>']
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sftlab experiments</title>
<style>
body {{ font-family: system-ui, "Noto Sans KR", "Apple SD Gothic Neo", sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; }} th, td {{ border: 1px solid #ccc; padding: .3em .7em; text-align: left; }}
td.done, td.failed, td.running, td.not-run {{ white-space: nowrap; }}
.done {{ background: #e6f4e6; }} .failed {{ background: #fbe3e3; }} .running {{ background: #fff5d6; }}
.not-run {{ color: #999; }}
</style></head><body>
<h1>sftlab experiments</h1>
<table><tr>{header}</tr>
{chr(10).join(rows)}
</table></body></html>
"""
    target = outputs / "index.html"
    atomic_write_text(target, page)
    return target
