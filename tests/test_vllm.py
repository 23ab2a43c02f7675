"""The vLLM engine against the HF engine, on the builtin model, in vLLM's own environment.

Needs `make setup-vllm` (.venv-vllm, about 70 s to install); without it the tests are skipped, saying so —
CI's `make test` does not build that environment. About five minutes on 2 CPU cores, most of it engine starts
(one engine is shared by the tests that load the builtin model) and the local judge's answers. Run them with:

    make setup-vllm && .venv/bin/pytest -q tests/test_vllm.py
"""

from __future__ import annotations

import shutil

import pytest

from sftlab import config, models
from sftlab.infer import GenerationSettings, HFEngine, select_examples
from sftlab.infer.vllm_engine import SwapCheckFailed, VLLMEngines, vllm_python

try:
    vllm_python()
    HAVE_VLLM = True
except models.ModelError:
    HAVE_VLLM = False

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not HAVE_VLLM, reason="no vLLM environment: run `make setup-vllm` first")]


@pytest.fixture(scope="module")
def prompts():
    from sftlab import paths

    params = config.load_params(paths.project_root() / "params" / "demo.yaml")
    return [e.prompt for e in select_examples(params)]


@pytest.fixture(scope="module")
def engines(prompts):
    """One vLLM engine for the tests that load the builtin model, as the infer stage keeps one for every
    checkpoint: each test swaps in what it needs (checked against a fresh load) instead of paying a start."""
    shared = VLLMEngines(dtype="float32", probes=prompts[:4])
    yield shared
    shared.close()


def test_greedy_outputs_match_the_hf_engine(builtin_model_path, prompts, engines):
    settings = GenerationSettings(max_new_tokens=48)
    fast = engines(str(builtin_model_path)).generate(prompts, settings)
    hf = HFEngine(str(builtin_model_path), dtype="float32")
    reference = [g for start in range(0, len(prompts), 16) for g in hf.generate(prompts[start:start + 16], settings)]
    same = sum(a.token_ids == b.token_ids and a.finish_reason == b.finish_reason for a, b in zip(fast, reference))
    assert same >= 0.9 * len(prompts), f"{same} of {len(prompts)} identical"


def test_a_swap_is_checked_against_a_fresh_load(builtin_model_path, prompts, engines, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # Two more "checkpoints" of the same shape: one with a nudged MLP, one with nudged (tied) embeddings.
    def nudged(name: str, nudge) -> str:
        folder = tmp_path / name
        model = AutoModelForCausalLM.from_pretrained(builtin_model_path, dtype=torch.float32)
        with torch.no_grad():
            nudge(model)
        model.save_pretrained(folder)
        AutoTokenizer.from_pretrained(builtin_model_path).save_pretrained(folder)
        return str(folder)

    mlp = nudged("mlp", lambda m: m.model.layers[-1].mlp.down_proj.weight.mul_(1.05))
    other = nudged("embeddings", lambda m: m.model.embed_tokens.weight.mul_(1.05))

    engines(str(builtin_model_path))
    loads, swaps = engines.fresh_loads, len(engines.swaps)
    engines(mlp)  # an MLP tensor swapped in place: the check passes
    assert engines.swaps[-1]["max_logprob_difference"] < 1e-3 and engines.fresh_loads == loads
    # SmolLM2 ties its input and output embeddings: after the reload the worker re-ties the output head,
    # so the new embeddings reach the logits too, in the same engine.
    swapped = engines(other).generate(prompts[:8], GenerationSettings(max_new_tokens=24))
    assert engines.fresh_loads == loads and len(engines.swaps) == swaps + 2 and engines.swaps[-1]["retied_head"]
    assert engines.swaps[-1]["max_logprob_difference"] < 1e-3
    hf = HFEngine(other, dtype="float32").generate(prompts[:8], GenerationSettings(max_new_tokens=24))
    assert sum(a.token_ids == b.token_ids for a, b in zip(swapped, hf)) >= 7
    # Without the re-tie, vLLM's reload leaves the output head at the old embeddings, and the check catches it.
    stale = VLLMEngines(dtype="float32", probes=prompts[:4], retie_head=False)
    try:
        stale(str(builtin_model_path))
        with pytest.raises(SwapCheckFailed, match="stale or partial weights"):
            stale(other)
    finally:
        stale.close()
    shutil.rmtree(tmp_path / "mlp")
    shutil.rmtree(tmp_path / "embeddings")


def test_two_replicas_give_the_rows_of_one_and_each_swap_is_checked_on_both(builtin_model_path, prompts, engines,
                                                                            tmp_path):
    """infer.data_parallel: 2 through vLLM: two workers (on CPU they share the cores; on a GPU machine each has
    its own GPUs), the stage's batches split between them, the same answers as one worker."""
    settings = GenerationSettings(max_new_tokens=24)
    batches = [prompts[start:start + 4] for start in range(0, 16, 4)]
    engine = engines(str(builtin_model_path))
    single = [engine.generate(batch, settings) for batch in batches]
    copy = tmp_path / "copy"
    shutil.copytree(builtin_model_path, copy)
    two = VLLMEngines(dtype="float32", probes=prompts[:2], data_parallel=2)
    try:
        engine = two(str(builtin_model_path))
        assert len(two.processes) == 2
        assert [g for _, g in engine.generate_batches(batches, settings)] == single
        two(str(copy))  # a swap: checked on each replica
        assert sorted(s["replica"] for s in two.swaps) == [0, 1] and two.fresh_loads == 1
    finally:
        two.close()


def test_the_environment_is_missing_says_what_to_run(monkeypatch, tmp_path):
    monkeypatch.setenv("SFTLAB_VLLM_PYTHON", str(tmp_path / "nowhere" / "python"))
    with pytest.raises(models.ModelError, match="make setup-vllm"):
        vllm_python()


def test_a_local_judge_is_served_used_and_stopped(outputs):
    """The plumbing of judge.backend: local with the demo model (its judgments are poor; that is fine)."""
    import urllib.request

    from test_judge import prepare
    from sftlab import judge
    from sftlab.config import validate

    rows = prepare(outputs, n=2)
    # 256 tokens per answer: uncapped, the demo model runs on to its context limit (minutes per row on CPU).
    params = validate({"experiment": "judged",
                       "judge": {"backend": "local", "max_retries": 1, "timeout_s": 120, "max_tokens": 256}})
    planned = judge.plan(params)
    assert planned.estimate()["cost_usd"] == 0.0 and "local" in planned.reason
    summary = judge.run(planned, progress=False)
    assert summary.rows == rows and summary.requests >= rows and summary.cost_usd == 0.0
    frame = judge.load_judgments(params)
    assert len(frame) == rows and frame["judge"].map(lambda j: "local" in j["model"]).all()
    log = (outputs / "judged" / "judge" / "local-server.log").read_text(encoding="utf-8")
    port = log.split("--port ")[1].split()[0]
    with pytest.raises(OSError):  # the server is gone after the run
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
