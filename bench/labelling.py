"""The labelling form's own share of a person's minute: how long the form takes to appear and to move on after
each save, for ten answers of the demo test set (Korean and English) from two checkpoints.

    .venv/bin/python bench/labelling.py [--answers 10]

Goal: ten answers a minute, i.e. six seconds an answer, of which reading and choosing are the person's; the form
should add well under half a second per save. Builds the form on the Python side (the state the browser shows is
the widget's traits) and saves each answer with every criterion set, as Enter does. Writes into a temporary
outputs folder. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", type=int, default=10)
    args = parser.parse_args()
    os.environ["SFTLAB_OUTPUTS"] = tempfile.mkdtemp(prefix="sftlab-bench-labelling-")
    sys.path.insert(0, str(ROOT / "tests"))
    from test_judge import demo_rows, generation_row, write_generations

    from sftlab import config, labels
    from sftlab.label_form import LabelForm

    samples = demo_rows(args.answers)
    outputs = Path(os.environ["SFTLAB_OUTPUTS"])
    for checkpoint, suffix in (("base", ""), ("checkpoint-10", " 끝.")):
        write_generations(outputs, checkpoint, [generation_row(s, checkpoint, s["answer"] + suffix) for s in samples],
                          experiment="bench")
    params = config.validate({"experiment": "bench", "judge": {"backend": "reference"}})
    started = time.perf_counter()
    form = LabelForm(params, labels.sample(params, n=args.answers), labeller="bench")
    shown = time.perf_counter() - started
    saves = []
    while not form.view.get("done"):
        for criterion in form.view["criteria"]:
            form.choose(criterion["key"], criterion["options"][-1]["value"])
        started = time.perf_counter()
        assert form.save()
        saves.append(time.perf_counter() - started)
    print(json.dumps({"answers": len(saves), "form_shown_s": round(shown, 3),
                      "save_and_next_median_s": round(statistics.median(saves), 4),
                      "save_and_next_max_s": round(max(saves), 4),
                      "font_bytes": len(form.fonts)}))


if __name__ == "__main__":
    main()
