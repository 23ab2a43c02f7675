"""The `sftlab` command.

    sftlab run PARAMS [--stages train,infer] [--set train.max_steps=5 ...]   run an experiment or a study folder
    sftlab notebook PARAMS --stage STAGE [--set ...] [--force]   write a parameterized copy of a stage notebook
                                                under the experiment and print the `jupyter lab` command
    sftlab resolve PARAMS [--set ...]                                        print the params as they would run
    sftlab prepare-model [NAME_OR_PATH]                                      convert a builtin model now
    sftlab prepare-train PARAMS [--set ...]     write the train config and data, run the label audit, print the
                                                torchrun command (for launching by hand, e.g. under Slurm)
    sftlab import-labels PARAMS FILE            import human labels (CSV or JSONL) for the reliability card
    sftlab index                                                             rebuild outputs/index.html
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

import yaml

from sftlab.errors import SftlabError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sftlab", description="Full fine-tuning of chat LLMs, judged.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the stages of a params file (or of every params file in a folder)")
    run.add_argument("params", help="a params file, e.g. params/demo.yaml, or a study folder")
    run.add_argument("--stages", help="comma-separated subset of train,infer,judge,score (default: all)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a param, e.g. --set train.max_steps=5 (repeatable; value read as YAML)")
    run.add_argument("--kernel", help="Jupyter kernel name (default: $SFTLAB_KERNEL or this checkout's own kernel, "
                     "`python -m sftlab.kernel name`)")

    notebook = sub.add_parser("notebook", help="write a parameterized copy of a stage notebook under the experiment "
                              "(outputs/<exp>/notebooks/) to open by hand; the templates stay untouched")
    notebook.add_argument("params")
    notebook.add_argument("--stage", required=True, help="train, infer, judge or score")
    notebook.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    notebook.add_argument("--force", action="store_true", help="overwrite a copy that is already there")

    resolve = sub.add_parser("resolve", help="print the merged, validated params with every default")
    resolve.add_argument("params")
    resolve.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    prepare = sub.add_parser("prepare-model", help="convert a builtin model to a cached HF checkpoint")
    prepare.add_argument("model", nargs="?", default="builtin:smollm2-135m-instruct")

    prepare_train = sub.add_parser("prepare-train", help="write the train config + data, audit labels, print the "
                                   "torchrun command (multi-node or Slurm launches)")
    prepare_train.add_argument("params")
    prepare_train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    import_labels = sub.add_parser("import-labels", help="import human labels (CSV or JSONL: id, checkpoint, "
                                   "labeller, a column per criterion) into outputs/<exp>/labels/")
    import_labels.add_argument("params")
    import_labels.add_argument("file")
    import_labels.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    sub.add_parser("index", help="rebuild outputs/index.html")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    from sftlab import reports, runner
    from sftlab.config import load_params
    from sftlab.data import DataError
    from sftlab.models import resolve_model
    from sftlab.train import UnsupervisedEOSError

    try:
        if args.command == "run":
            stages = [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else None
            runner.run(args.params, stages=stages, overrides=args.overrides, kernel=args.kernel)
            print(f"index: {reports.build_index()}")
        elif args.command == "notebook":
            copy = runner.notebook_copy(load_params(args.params, args.overrides), args.stage, force=args.force)
            print(f"notebook: {copy}", file=sys.stderr)
            print(f"{shlex.quote(str(Path(sys.prefix) / 'bin' / 'jupyter'))} lab {shlex.quote(str(copy))}")
        elif args.command == "resolve":
            params = load_params(args.params, args.overrides)
            print(yaml.safe_dump(params.to_dict(), sort_keys=False, allow_unicode=True), end="")
        elif args.command == "prepare-model":
            print(resolve_model(args.model))
        elif args.command == "prepare-train":
            prepare_train(load_params(args.params, args.overrides))
        elif args.command == "import-labels":
            from sftlab import labels

            params = load_params(args.params, args.overrides)
            count = labels.import_file(params, args.file)
            print(f"{count} labels imported into {labels.labels_file(params.layout)}; the next score run shows the "
                  f"judge's agreement with them")
        elif args.command == "index":
            print(reports.build_index())
    # DataError and UnsupervisedEOSError: by name until their modules derive them from SftlabError too.
    except (SftlabError, DataError, UnsupervisedEOSError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"sftlab: error: {e}", file=sys.stderr)
        return 1
    return 0


def prepare_train(params) -> None:
    """What the train stage does before its launch, for launching torchrun by hand."""
    from sftlab import train
    from sftlab.config import write_resolved

    write_resolved(params)
    planned = train.plan(params)
    train.preflight(planned, echo=lambda line: print(line, file=sys.stderr))
    train.release(planned)  # the torchrun started by hand is not ours to lock for
    print(f"train config: {planned.config_path}", file=sys.stderr)
    print(" ".join(planned.command))


if __name__ == "__main__":
    sys.exit(main())
