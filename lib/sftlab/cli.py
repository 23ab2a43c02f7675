"""The `sftlab` command.

    sftlab run PARAMS [--stages train,infer] [--set train.max_steps=5 ...]   run an experiment or a study folder
        [--executor local|slurm|PROFILE.yaml] [--wait]   here (local), or submitted as Slurm jobs (slurm): the
                                                job ids are printed and the command returns, or follows them
    sftlab status PARAMS [--wait] [--json]      each stage's state (and job), refreshed from the scheduler
    sftlab cancel PARAMS                        cancel every queued or running job of the experiment or study
    sftlab notebook PARAMS --stage STAGE [--set ...] [--force]   write a parameterized copy of a stage notebook
                                                under the experiment and print the `jupyter lab` command
    sftlab resolve PARAMS [--set ...]                                        print the params as they would run
    sftlab prepare-model [NAME_OR_PATH]                                      convert a builtin model now
    sftlab prepare-train PARAMS [--set ...]     write the train config and data, run the label audit, print the
                                                torchrun command (for launching by hand, e.g. under Slurm)
    sftlab import-labels PARAMS FILE            import human labels (CSV or JSONL) for the reliability card
    sftlab import-recipe RECIPE.yaml [-o params/NAME.yaml]   a TRL / alignment-handbook recipe as a params file:
                                                what it mapped and dropped, then every remaining problem at once
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
    run.add_argument("--executor", help="where the stages run: local, slurm, or a YAML file of executor keys (a "
                     "cluster profile); the same as --set executor.backend=... (default: the params' executor)")
    run.add_argument("--wait", action="store_true", help="slurm: follow the jobs to their end instead of returning")

    for name, text in (("status", "each stage's state and job, refreshed from the scheduler"),
                       ("cancel", "cancel every queued or running job of the experiment or study folder")):
        command = sub.add_parser(name, help=text)
        command.add_argument("params", help="the params file or study folder that was run")
        command.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
        if name == "status":
            command.add_argument("--wait", action="store_true", help="follow until every job has ended")
            command.add_argument("--json", action="store_true", help="print the rows as JSON")

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

    import_recipe = sub.add_parser("import-recipe", help="write a params file from a TRL or alignment-handbook "
                                   "training recipe (flat YAML), saying what was mapped, dropped and why")
    import_recipe.add_argument("recipe")
    import_recipe.add_argument("-o", "--output", help="the params file to write (default: params/<recipe name>.yaml)")

    sub.add_parser("index", help="rebuild outputs/index.html")
    return parser


def main(argv: list[str] | None = None) -> int:
    from sftlab import imports

    imports.skip_unused()  # before anything imports nbformat: a second less for every command that reads notebooks
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    from sftlab import executor, reports, runner
    from sftlab.config import load_params
    from sftlab.models import resolve_model

    try:
        if args.command == "run":
            stages = [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else None
            overrides = executor.executor_overrides(args.executor) + args.overrides
            ran = executor.run(args.params, stages=stages, overrides=overrides, kernel=args.kernel, wait=args.wait)
            if ran[0].executor.backend == "slurm" and not args.wait:
                print(f"submitted; follow: sftlab status {shlex.quote(args.params)} [--wait]; "
                      f"cancel: sftlab cancel {shlex.quote(args.params)}", file=sys.stderr)
            print(f"index: {reports.build_index()}")
        elif args.command in ("status", "cancel"):
            layouts = executor.layouts_of(args.params, args.overrides)
            if args.command == "cancel":
                rows = executor.cancel(layouts)
            elif args.wait:
                rows = executor.follow(layouts, echo=lambda line: print(line, file=sys.stderr))
            else:
                rows = executor.refresh(layouts)
            print(executor.status_json(rows) if getattr(args, "json", False) else executor.format_rows(rows))
            if any(r.status in executor.UNSUCCESSFUL for r in rows) and args.command == "status":
                return 1
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
        elif args.command == "import-recipe":
            return import_recipe(args.recipe, args.output)
        elif args.command == "index":
            print(reports.build_index())
    except (SftlabError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"sftlab: error: {e}", file=sys.stderr)
        return 1
    return 0


def import_recipe(recipe: str, output: str | None) -> int:
    """Write the params file, list what was mapped and dropped, then validate it: every remaining problem at
    once (exit 1 when there is one; the file stays, to be edited)."""
    from sftlab import recipes
    from sftlab.config import ParamsError, load_params

    target, converted = recipes.import_recipe(recipe, output)
    print(f"wrote {target}", file=sys.stderr)
    print(converted.header(recipe), end="", file=sys.stderr)
    try:
        load_params(target)
    except ParamsError as e:
        print(f"sftlab: {target} needs editing before it runs:\n{e}", file=sys.stderr)
        return 1
    print(f"{target} validates: run it with `sftlab run {target}`", file=sys.stderr)
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
