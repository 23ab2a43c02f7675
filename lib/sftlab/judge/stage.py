"""The judge stage: generations in, one judgment row per (checkpoint, sample) out.

    plan(params)        read the generation rows (sftlab.infer.store), pick each row's rubric, compute its cache key and
                        sort it: up to date / reusable from the cache / to judge; with an estimate of
                        requests, tokens and cost. Reads only: no request (not even the probe), no file written
    preflight(plan)     the OpenAI backend asks the server once which structured-output mode it supports
                        (sftlab.judge.probe, remembered after that); `run` does it first if not done
    run(plan)           sort the plan's rows against the store again, then judge what is left and append the
                        rows to `judge/<checkpoint>.jsonl`; works from a script and from a notebook cell
                        (where an event loop already runs)

The cache key is a hash of (rubric content, backend and judge model, prompt, reference, output). A row
is up to date when the latest row of its (checkpoint, id) is judged under its key; otherwise a judged
row with the same key anywhere in `judge/` is copied (no request); otherwise it is judged. `run` re-reads
the store before it starts, so calling it twice on the same plan (a notebook cell run again) sends and
writes nothing the second time and says so; a re-run after failures sends requests for the failed rows only.

Also writes `judge/summary.json` (backend, model, counts, requests, cost). Raises `GenerationsError`
for missing or malformed generations (file, line, field), `JudgeConfigError` when the backend cannot
start, `JudgeStopped` after writing every row when the endpoint refused to serve at all (bad key,
unknown model, unreachable: see the circuit breaker in sftlab.judge.api), and `JudgeFailed` after
writing every row when not one row of the run could be judged. A budget stop is not an error.

Failures nobody can miss: when any row of the run failed, `Summary.failure_line()` says how many and
why ("judge: 160/160 rows failed — connection failed: ..."), the notebook shows it, and it is noted in
the run record (sftlab.record), so the stage's status is `done with errors` and the index says so.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from sftlab import paths
from sftlab import record as run_record
from sftlab.progress import bar as progress_bar
from sftlab.clock import utc_now
from sftlab.config import JudgeParams, Params
from sftlab.files import atomic_write_text
from sftlab.infer.store import GenerationRow, GenerationsError, read_generations
from sftlab.judge import cost, pairwise, probe, reference, store
from sftlab.judge.api import Job, JudgeConfigError, OpenAIJudge, Outcome
from sftlab.judge.batch import BatchJudge
from sftlab.judge.local import LOCAL_NAME, LocalJudgeServer
from sftlab.judge.pairwise import PairRubric, load_pair_rubric, model_pairs, pair_name
from sftlab.judge.rubric import Rubric, load_rubric
from sftlab.judge.store import JudgmentRow
from sftlab.errors import SftlabError

__all__ = ["GenerationsError", "JudgeConfigError", "JudgeFailed", "JudgeStopped", "Plan", "Summary", "plan",
           "preflight", "run"]

class JudgeStopped(SftlabError, RuntimeError):
    """The endpoint refused every request (bad key, unknown model, no quota) or cannot be reached; rows
    were still written."""


class JudgeFailed(SftlabError, RuntimeError):
    """Every row of the run failed; the rows (with their errors) were still written."""


# --------------------------------------------------------------------------------------------
# Plan
# --------------------------------------------------------------------------------------------


def backend_choice(judge: JudgeParams) -> tuple[str, str]:
    """(backend, why): auto -> openai when an endpoint is configured (base_url, or the key's variable is
    set), else the offline reference judge. The reason is shown before anything is sent."""
    if judge.backend == "local":
        return "openai", f"judge.backend is local: vllm serve {judge.local_model} on 127.0.0.1, for this run"
    if judge.backend != "auto":
        return judge.backend, f"judge.backend is {judge.backend}"
    if judge.base_url:
        return "openai", f"judge.backend is auto and judge.base_url is set ({judge.base_url})"
    if os.environ.get(judge.api_key_env):
        return "openai", (f"judge.backend is auto and ${judge.api_key_env} is set (requests go to OpenAI and "
                          f"cost money; --set judge.backend=reference judges offline)")
    return "reference", f"judge.backend is auto, with no judge.base_url and no ${judge.api_key_env}"


def resolve_backend(judge: JudgeParams) -> str:
    return backend_choice(judge)[0]


def rubric_path(judge: JudgeParams, row: GenerationRow) -> str:
    lang = row.meta.get("lang")
    return (judge.rubric_by_lang or {}).get(lang) or judge.rubric


def judgment_key(rubric: Rubric, judge_model: str, row: GenerationRow) -> str:
    return _key({"rubric": rubric.fingerprint, "judge": judge_model, "prompt": row.prompt,
                 "reference": row.reference, "output": row.output})


def _key(payload: dict[str, Any]) -> str:
    """The cache key of a judgment: a hash of everything its answer depends on."""
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False)
    # surrogatepass: a lone surrogate in a model output hashes (valid text hashes exactly as with utf-8).
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


@dataclass
class Item:
    row: GenerationRow  # in pairwise mode: the answer shown first (A)
    rubric: Rubric | PairRubric
    key: str
    second: GenerationRow | None = None  # pairwise: the answer shown second (B)
    repeat: int = 0  # the pass, under judge.repeats
    single: Rubric | None = None  # pairwise: the single-answer rubric the offline judge scores each side with

    @property
    def name(self) -> str:
        """The file its judgment goes to: the checkpoint, or in pairwise mode `<A>~<B>`."""
        return self.row.checkpoint if self.second is None else pair_name(self.row.checkpoint, self.second.checkpoint)

    @property
    def output(self) -> str | tuple[str, str]:
        return self.row.output if self.second is None else (self.row.output, self.second.output)


@dataclass
class Plan:
    params: Params
    backend: str  # openai | reference
    reason: str  # why this backend (backend_choice)
    model: str  # the judge model: an API model name, or reference-v1+<tokenizer>
    rubrics: dict[str, Rubric | PairRubric]  # path -> rubric, those in use
    items: list[Item]
    directory: Path = Path()  # judge/ (single) or judge/pairwise/ (pairwise)
    mode: str = "single"
    up_to_date: list[Item] = field(default_factory=list)
    reuse: list[tuple[Item, JudgmentRow]] = field(default_factory=list)  # (item, cached row)
    jobs: dict[str, list[Item]] = field(default_factory=dict)  # key -> rows sharing that judgment
    structured: probe.Structured | None = None  # openai: the structured-output mode the run starts in, and why

    @property
    def to_judge(self) -> int:
        return sum(len(items) for items in self.jobs.values())

    def estimate(self) -> dict[str, Any]:
        """Requests, tokens and cost this plan will take, before sending anything (no retries counted)."""
        judge = self.params.judge
        prompt_tokens = completion_tokens = 0
        if self.backend == "openai":
            mode = self.structured.mode if self.structured else "json_schema"
            for items in self.jobs.values():
                item = items[0]
                messages = item.rubric.messages(item.row.prompt, item.row.reference, item.output)
                text = "".join(m["content"] for m in messages)
                if mode == "json_schema":  # the schema is sent too, and billed as input
                    text += json.dumps(item.rubric.response_schema(), ensure_ascii=False)
                prompt_tokens += cost.estimate_tokens(text)
                completion_tokens += cost.estimate_completion_tokens(len(item.rubric.criteria))
            price = cost.price_for(judge.model, judge.prices, batch=judge.batch)
            estimated = 0.0 if judge.backend == "local" else cost.cost_usd(price, prompt_tokens, completion_tokens)
        else:
            estimated = 0.0
        return {
            "backend": self.backend, "model": self.model, "rows": len(self.items), "up_to_date": len(self.up_to_date),
            "from_cache": len(self.reuse), "to_judge": self.to_judge,
            "requests": len(self.jobs) if self.backend == "openai" else 0,
            "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "cost_usd": estimated,
            "max_cost_usd": judge.max_cost_usd,
            "structured": str(self.structured) if self.structured else None,
            "probe_requests": self.structured.requests if self.structured else 0,
        }


def plan(params: Params) -> Plan:
    """Sort every judgment to make into up to date / from cache / to judge. Sends nothing.

    Single mode: one judgment per generation row. Pairwise mode (sftlab.judge.pairwise): per sample, one
    judgment per pair of models and order — both orders of every pair `judge.pairs` selects."""
    judge = params.judge
    backend, reason = backend_choice(judge)
    model = (reference.judge_model() if backend == "reference"
             else f"{judge.local_model} (local vllm serve)" if judge.backend == "local" else judge.model)
    rows = read_generations(params.layout.generations)
    rubrics: dict[str, Rubric | PairRubric] = {}
    for row in rows:
        path = rubric_path(judge, row)
        if path not in rubrics:
            rubrics[path] = load_rubric(path)
            if backend == "reference":
                reference.check_rubric(rubrics[path], str(paths.resolve(path)))
    identity = f"{backend}:{model}"
    pairwise_mode = judge.mode == "pairwise"
    directory = params.layout.judgments(judge.mode)
    result = Plan(params, backend, reason, model, {}, items=[], directory=directory, mode=judge.mode)
    if pairwise_mode:
        items = _pair_items(params, rows, rubrics, identity, result.rubrics)
    else:
        result.rubrics.update(rubrics)
        items = [Item(row, rubrics[rubric_path(judge, row)], judgment_key(rubrics[rubric_path(judge, row)], identity, row))
                 for row in rows]
    if judge.repeats > 1:  # the same judgment again: a key of its own per pass, so each pass is a request
        items = [item if repeat == 0 else replace(item, key=_repeat_key(item.key, repeat), repeat=repeat)
                 for item in items for repeat in range(judge.repeats)]
    result.items = items
    result.up_to_date, result.reuse, result.jobs = sort_items(items, directory)
    if backend == "openai":
        result.structured = _known_structured(params)
    return result


def sort_items(items: list[Item], directory: Path) -> tuple[list[Item], list[tuple[Item, JudgmentRow]],
                                                           dict[str, list[Item]]]:
    """(up to date, reusable from the cache, to judge by key), as the store in `directory` holds them now."""
    latest = store.latest_rows(directory)
    cache = store.judged_by_key(directory)
    up_to_date, reuse, jobs = [], [], {}
    for item in items:
        last = latest.get((item.name, item.row.id, item.repeat))
        if last and last.key == item.key and last.status == "judged":
            up_to_date.append(item)
        elif item.key in cache:
            reuse.append((item, cache[item.key]))
        else:
            jobs.setdefault(item.key, []).append(item)
    return up_to_date, reuse, jobs


def _known_structured(params: Params) -> probe.Structured:
    """The mode the run starts in, as far as known without a request: forced, remembered, or to be probed."""
    judge = params.judge
    if judge.backend == "local":  # its server starts with the run: nothing to ask yet
        return probe.Structured("json_schema" if judge.structured == "auto" else judge.structured, "not probed",
                                note="the local vLLM server starts with the run; a 400/422 moves down a mode")
    return probe.known(judge, params.layout.judge)


def preflight(planned: Plan) -> probe.Structured | None:
    """What the run needs before its first row: under the OpenAI backend, the structured-output mode, asked
    of the server (a few tiny probe requests, at most once per server and model: sftlab.judge.probe) when
    the plan has rows to judge and nothing is known yet. `run` does this first; the notebook may call it to
    show the result before judging."""
    return run_sync(_preflight(planned))


async def _preflight(planned: Plan) -> probe.Structured | None:
    structured = planned.structured
    if structured is not None and structured.how == probe.NOT_ASKED and planned.jobs:
        planned.structured = await probe.choose(planned.params.judge, planned.params.layout.judge)
    return planned.structured


def _repeat_key(key: str, repeat: int) -> str:
    """Pass 0 keeps the key it always had (a cache made without repeats stays valid)."""
    return hashlib.sha256(f"{key}|repeat {repeat}".encode()).hexdigest()[:32]


def pairwise_baseline(params: Params) -> str:
    """The model every other is compared with under `judge.pairs: baseline`: `score.baseline` when it
    names a checkpoint of this experiment, else the base model."""
    baseline = params.score.baseline or "base"
    experiment, _, checkpoint = baseline.rpartition("/")
    return checkpoint if experiment in ("", params.experiment) else "base"


def _pair_items(params: Params, rows: list[GenerationRow], singles: dict[str, Rubric], identity: str,
                used: dict[str, Rubric | PairRubric]) -> list[Item]:
    """Both orders of every selected pair of models, for every sample both answered."""
    judge = params.judge
    by_model: dict[str, dict[str, GenerationRow]] = {}
    for row in rows:
        by_model.setdefault(row.checkpoint, {})[row.id] = row
    models = list(by_model)  # base first, then by step (read_generations' order)
    baseline = pairwise_baseline(params)
    if judge.pairs == "baseline" and baseline not in by_model:
        raise GenerationsError(f"judge.pairs: baseline: the baseline '{baseline}' has no generations in "
                               f"{params.layout.generations} (models: {', '.join(models)})")
    items = []
    for a, b in model_pairs(models, judge.pairs, baseline):
        for sample_id in [i for i in by_model[a] if i in by_model[b]]:
            for first, second in ((a, b), (b, a)):
                row, other = by_model[first][sample_id], by_model[second][sample_id]
                lang = row.meta.get("lang")
                path = (judge.pairwise_rubric_by_lang or {}).get(lang) or judge.pairwise_rubric
                if path not in used:
                    used[path] = load_pair_rubric(path)
                rubric = used[path]
                payload = {"rubric": rubric.fingerprint, "judge": identity, "prompt": row.prompt,
                           "reference": row.reference, "first": row.output, "second": other.output}
                if identity.startswith("reference:"):  # the offline verdict also depends on how each answer ended
                    payload["finish"] = [row.finish_reason, other.finish_reason]
                items.append(Item(row, rubric, _key(payload), second=other, single=singles[rubric_path(judge, row)]))
    return items


# --------------------------------------------------------------------------------------------
# Run
# --------------------------------------------------------------------------------------------


@dataclass
class Summary:
    backend: str
    model: str
    rows: int = 0
    up_to_date: int = 0
    from_cache: int = 0
    judged: int = 0
    errors: int = 0
    not_judged: int = 0
    requests: int = 0
    cost_usd: float | None = 0.0
    stopped: str | None = None
    structured: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    error_counts: dict[str, int] = field(default_factory=dict)  # error text -> rows, this run
    batches: int = 0  # Batch API batches created by this run (judge.batch)
    flips: tuple[int, int] | None = None  # pairwise: (pairs judged in both orders, position flips among them)
    probe: str | None = None  # openai: the structured-output mode the run started in, and how it was chosen

    def failure_line(self) -> str | None:
        """"judge: 160/160 rows failed — connection failed: ..." when any row of this run failed, else None."""
        if not self.errors and not self.not_judged:
            return None
        parts = []
        if self.errors:
            parts.append(f"{self.errors}/{self.rows} rows failed")
        if self.not_judged:
            parts.append(f"{self.not_judged}/{self.rows} rows not judged")
        reason = max(self.error_counts, key=self.error_counts.get) if self.error_counts else self.stopped or ""
        reason = reason if len(reason) <= 160 else reason[:157] + "..."
        return f"judge: {', '.join(parts)}" + (f" — {reason}" if reason else "")

    def __str__(self) -> str:
        cost_text = "unknown (no price for this model)" if self.cost_usd is None else f"${self.cost_usd:.4f}"
        lines = [
            f"judge: {self.backend} ({self.model})",
            f"rows: {self.rows} — up to date {self.up_to_date}, from cache {self.from_cache}, "
            f"judged now {self.judged}, errors {self.errors}, not judged {self.not_judged}",
            f"requests: {self.requests}" + (f" in {self.batches} batches" if self.batches else "")
            + f", cost: {cost_text}, {self.seconds:.1f} s",
        ]
        if self.probe:
            lines.append(f"structured output: {self.probe}"
                         + (f"; answers by mode: {self.structured}" if self.structured else ""))
        if self.stopped:
            lines.append(f"stopped: {self.stopped}")
        if self.flips is not None:
            pairs, flips = self.flips
            rate = f"{flips / pairs:.1%}" if pairs else "n/a"
            lines.append(f"position flips: {flips} of {pairs} pairs judged in both orders ({rate})")
        if self.failure_line():
            lines.append(self.failure_line())
        return "\n".join(lines)


def run(planned: Plan, progress: bool = True, echo: Callable[[str], None] = print) -> Summary:
    """Judge what `planned` says is left, as the store holds it now (the preflight first, if not done); append
    every row; return the counts. A plan whose rows are all judged already sends and writes nothing."""
    return run_sync(_run(planned.params, planned, progress, echo))


def run_sync(coroutine):
    """Run a coroutine to the end from sync code — also inside Jupyter, whose own event loop is
    already running (asyncio.run would refuse): then it runs on a worker thread with a loop of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    result: dict[str, Any] = {}

    def worker() -> None:
        try:
            result["value"] = asyncio.run(coroutine)
        except BaseException as e:  # re-raised in the caller's thread
            result["error"] = e

    thread = threading.Thread(target=worker, name="sftlab-judge")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


async def _run(params: Params, planned: Plan, progress: bool, echo: Callable[[str], None]) -> Summary:
    started = time.monotonic()
    # The store again: rows judged since planning (a first call of run, another run) are not judged twice.
    up_to_date, reuse, jobs = sort_items(planned.items, planned.directory)
    planned.up_to_date, planned.reuse, planned.jobs = up_to_date, reuse, jobs
    summary = Summary(planned.backend, planned.model, rows=len(planned.items), up_to_date=len(up_to_date),
                      from_cache=len(reuse))
    if not reuse and not jobs:
        echo(f"judge: nothing to do — all {len(up_to_date)} rows of the plan are judged in {planned.directory}")
        summary.probe = str(planned.structured) if planned.structured else None
        return summary
    await _preflight(planned)
    summary.probe = str(planned.structured) if planned.structured else None
    costs: list[float | None] = []
    with store.Appender(planned.directory) as out:
        for item, cached in reuse:
            out.append(_copied_row(item, cached))

        bar = progress_bar(sum(len(items) for items in jobs.values()), "judge", unit="row", disable=not progress)

        def record(key: str, outcome: Outcome) -> None:
            items = jobs[key]
            for index, item in enumerate(items):
                row = _row(item, planned, outcome)
                if index:  # rows that share a judgment pay for it once
                    row = row.model_copy(update={"usage": None, "cost_usd": 0.0, "requests": 0,
                                                 "reused_from": f"{items[0].name}/{items[0].row.id}"})
                out.append(row)
                summary.judged += outcome.status == "judged"
                summary.errors += outcome.status == "error"
                summary.not_judged += outcome.status == "not_judged"
                if outcome.status != "judged" and outcome.error:
                    summary.error_counts[outcome.error] = summary.error_counts.get(outcome.error, 0) + 1
            costs.append(outcome.cost_usd if outcome.requests else 0.0)
            bar.update(len(items))

        try:
            if planned.backend == "reference":
                for key, items in jobs.items():
                    record(key, _reference_outcome(items[0]))
            elif jobs:
                local = None
                settings = params.judge
                if settings.backend == "local":  # an open model served on this machine for the run
                    local = LocalJudgeServer(settings, params.layout.judge / "local-server.log")
                    settings = settings.model_copy(update={
                        "base_url": local.__enter__(), "model": LOCAL_NAME, "batch": False,
                        "prices": {LOCAL_NAME: {"input_per_mtok": 0.0, "output_per_mtok": 0.0}}})
                start = planned.structured.mode if planned.structured else None
                backend = (BatchJudge(settings, start_mode=start, state_dir=params.layout.judge) if settings.batch
                           else OpenAIJudge(settings, start_mode=start))
                distinct = [Job(key, items[0].rubric, items[0].row.prompt, items[0].row.reference,
                                items[0].output) for key, items in jobs.items()]
                try:
                    await backend.judge_all(distinct, lambda job, outcome: record(job.key, outcome))
                finally:
                    if local is not None:
                        local.__exit__()
                    summary.requests, summary.stopped = backend.requests, backend.stopped
                    summary.batches = getattr(backend, "batches_created", 0)
                    summary.structured = backend.mode_counts
                if backend.fatal:
                    summary.seconds = round(time.monotonic() - started, 2)
                    _write_summary(params, planned, summary)
                    run_record.note_problem(summary.failure_line() or backend.stopped)
                    if backend.unreachable:
                        raise JudgeStopped(backend.unreachable)
                    raise JudgeStopped(f"{backend.stopped}; no judgment could be made: fix the judge "
                                       f"settings and run the stage again (rows judged so far are kept)")
        finally:
            bar.close()
    summary.cost_usd = None if any(c is None for c in costs) else round(sum(costs), 6)
    summary.seconds = round(time.monotonic() - started, 2)
    if planned.mode == "pairwise":
        summary.flips = pairwise.position_flips(store.latest_rows(planned.directory).values())
    _write_summary(params, planned, summary)
    if summary.failure_line():
        run_record.note_problem(summary.failure_line())
        if summary.errors and not (summary.judged or summary.up_to_date or summary.from_cache):
            raise JudgeFailed(f"{summary.failure_line()}. The rows are written with their errors (see the "
                              f"judge report); a re-run retries them")
    return summary


def _reference_outcome(item: Item) -> Outcome:
    try:
        if item.second is not None:
            verdict, reason, numbers = pairwise.reference_verdict(item.row.to_json(), item.second.to_json(),
                                                                  item.single)
            return Outcome("judged", scores={pairwise.CRITERION: verdict}, reasons={pairwise.CRITERION: reason},
                           raw=json.dumps(numbers), cost_usd=0.0, metrics=numbers)
        result = reference.evaluate(item.row.to_json(), item.rubric)
    except Exception as e:  # a row the metrics cannot handle fails alone, named by the row
        return Outcome("error", error=f"reference judge failed on {item.name}/{item.row.id}: "
                                      f"{type(e).__name__}: {e}")
    return Outcome("judged", scores=result["scores"], reasons=result["reasons"], raw=result["raw"],
                   cost_usd=0.0, metrics=result["metrics"])


def _row(item: Item, planned: Plan, outcome: Outcome) -> JudgmentRow:
    row = item.row
    return JudgmentRow(
        key=item.key, id=row.id, checkpoint=item.name, status=outcome.status,
        judge={"backend": planned.backend, "model": planned.model, "rubric": item.rubric.name},
        scores=outcome.scores, reasons=outcome.reasons,
        overall=item.rubric.overall(outcome.scores) if outcome.scores else None,
        error=outcome.error, raw=outcome.raw, first_raw=outcome.first_raw, usage=outcome.usage, cost_usd=outcome.cost_usd,
        requests=outcome.requests, structured=outcome.structured, metrics=outcome.metrics, reused_from=None,
        meta=row.meta, judged_at=utc_now(), repeat=item.repeat)


def _copied_row(item: Item, cached: JudgmentRow) -> JudgmentRow:
    return cached.model_copy(update={
        "id": item.row.id, "checkpoint": item.name, "meta": item.row.meta, "usage": None, "repeat": item.repeat,
        "cost_usd": 0.0, "requests": 0, "reused_from": f"{cached.checkpoint}/{cached.id}", "judged_at": utc_now()})


def _write_summary(params: Params, planned: Plan, summary: Summary) -> None:
    target = params.layout.judge_summary(planned.mode)
    target.parent.mkdir(parents=True, exist_ok=True)
    data = {**summary.__dict__, "rubrics": {str(p): r.name for p, r in planned.rubrics.items()},
            "finished": utc_now()}
    atomic_write_text(target, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
