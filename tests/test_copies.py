"""A copied, moved or untarred experiment is the same experiment: its train config compares equal wherever
it lies, its checkpoints are identified by content (never by modification times), and its judgments are
keyed by content, so a re-run trains, generates and judges nothing again. A retrained checkpoint does
differ."""

import json
import os
import shutil
import tarfile
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_params
from safetensors.torch import save_file

from sftlab import checkpoints, data, infer, judge, train
from sftlab.config import load_params
from sftlab.train import launch

SETTINGS = {"infer": {"num_samples": 3, "batch_size": 3, "max_new_tokens": 4}, "judge": {"backend": "reference"}}


def touch_everything(folder: Path) -> None:
    """New whole-second modification times on every file, as a copy or an untar may leave them."""
    stamp = int(time.time()) + 1000
    for path in folder.rglob("*"):
        os.utime(path, (stamp, stamp))


def plans(file: Path, experiment: str, model: Path):
    params = load_params(file, [f"experiment={experiment}"])
    examples, _ = data.load_splits(params.data, params.seed)
    return train.plan(params, examples, str(model)), infer.plan(params), judge.plan(params)


@pytest.mark.slow
def test_a_copied_or_untarred_experiment_trains_generates_and_judges_nothing_again(
        tmp_path, outputs, tiny_model_path, monkeypatch):
    file = tiny_params(tmp_path, tiny_model_path, max_steps=2, save_steps=1)
    file.write_text(yaml.safe_dump({**yaml.safe_load(file.read_text()), **SETTINGS}), encoding="utf-8")
    params = load_params(file)
    examples, _ = data.load_splits(params.data, params.seed)
    train.run(train.plan(params, examples, str(tiny_model_path)), echo=lambda line: None)
    infer.run(infer.plan(params), echo=lambda line: None)
    judge.run(judge.plan(params), progress=False)

    def assert_nothing_to_do(experiment: str) -> None:
        trained, inferred, judged = plans(file, experiment, tiny_model_path)
        assert trained.skip, experiment
        assert not any(job.stale for job in inferred.jobs) and inferred.estimate()["to_generate"] == 0, experiment
        assert inferred.estimate()["up_to_date"] == 3 * 3  # base, checkpoint-1, checkpoint-2
        estimate = judged.estimate()
        assert (estimate["up_to_date"], estimate["from_cache"], estimate["to_judge"]) == (9, 0, 0), experiment

    # cp -r: another name in the same outputs folder, every file written anew.
    shutil.copytree(outputs / "tiny", outputs / "copied")
    touch_everything(outputs / "copied")
    assert_nothing_to_do("copied")

    # A tar round trip into another outputs folder (a moved checkout), whole-second times.
    with tarfile.open(tmp_path / "tiny.tar", "w") as tar:
        tar.add(outputs / "tiny", arcname="tiny")
    moved = tmp_path / "elsewhere" / "outputs"
    with tarfile.open(tmp_path / "tiny.tar") as tar:
        tar.extractall(moved, filter="tar")
    touch_everything(moved / "tiny")
    monkeypatch.setenv("SFTLAB_OUTPUTS", str(moved))
    assert_nothing_to_do("tiny")

    # Planning wrote nothing; the config the preflight writes is the launchable one: absolute, in the copy's folder.
    trained, _, _ = plans(file, "tiny", tiny_model_path)
    train.preflight(trained, label_audit=False)
    train.release(trained)
    config = yaml.safe_load((moved / "tiny" / "train" / "train_config.yaml").read_text())
    assert config["output_dir"] == str(moved / "tiny" / "train")
    assert launch.portable(config)["train_file"] == "<experiment>/train/train.jsonl"

    # A retrained checkpoint (same shapes, other weights) is generated again.
    checkpoint = moved / "tiny" / "train" / "checkpoint-2"
    weights = {name: tensor + 0.01 for name, tensor in load_weights(checkpoint / "model.safetensors").items()}
    save_file(weights, checkpoint / "model.safetensors", metadata={"format": "pt"})
    _, inferred, _ = plans(file, "tiny", tiny_model_path)
    assert [job.target.name for job in inferred.jobs if job.stale] == ["checkpoint-2"]


def load_weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(path)


def test_content_fingerprint_ignores_place_and_time_and_sees_new_weights(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    torch.manual_seed(0)
    weights = {"embed": torch.randn(4096, 1024), "head": torch.randn(1024, 64)}  # ~17 MiB: sampled, not hashed whole
    save_file(weights, first / "model.safetensors")
    (first / "config.json").write_text(json.dumps({"hidden_size": 1024}))
    (first / "training_args.bin").write_bytes(b"pickled arguments naming " + str(first).encode())
    assert (first / "model.safetensors").stat().st_size > checkpoints.FULL_HASH_BYTES
    fingerprint = checkpoints.content_fingerprint(first)

    shutil.copytree(first, second)
    (second / "training_args.bin").write_bytes(b"pickled arguments naming " + str(second).encode())
    touch_everything(second)
    assert checkpoints.content_fingerprint(second) == fingerprint

    save_file({k: v * 1.001 for k, v in weights.items()}, second / "model.safetensors")  # trained on: same size
    assert (second / "model.safetensors").stat().st_size == (first / "model.safetensors").stat().st_size
    assert checkpoints.content_fingerprint(second) != fingerprint
    (second / "config.json").write_text(json.dumps({"hidden_size": 1025}))
    shutil.copy(first / "model.safetensors", second / "model.safetensors")
    assert checkpoints.content_fingerprint(second) != fingerprint  # the config is part of the model


def test_portable_config_is_the_same_wherever_the_experiment_lies(tmp_path):
    def config(root: str, experiment: str, model: str) -> dict:
        return {"model_name_or_path": model, "train_file": f"{root}/outputs/{experiment}/train/train.jsonl",
                "output_dir": f"{root}/outputs/{experiment}/train", "learning_rate": 1e-4,
                "fsdp_config": {"cpu_ram_efficient_loading": True}}

    here = config("/work/a", "demo", "/work/a/outputs/models/smollm2")
    there = config("/home/b/checkout", "demo2", "/home/b/checkout/outputs/models/smollm2")
    assert launch.portable(here) == launch.portable(there)
    assert launch.portable(here)["model_name_or_path"] == "<outputs>/models/smollm2"
    assert launch.portable(config("/w", "x", "/w/models/mine"))["model_name_or_path"] == "<outputs>/../models/mine"
    # A model elsewhere, or a hub id, is itself.
    assert launch.portable(config("/w", "x", "/data/models/m"))["model_name_or_path"] == "/data/models/m"
    hub = "HuggingFaceTB/SmolLM2-135M"
    assert launch.portable(config("/w", "x", hub))["model_name_or_path"] == hub
    assert launch.portable(here) != launch.portable(config("/work/a", "demo", "/work/a/outputs/models/other"))
