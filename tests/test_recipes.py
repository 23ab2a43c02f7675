"""`sftlab import-recipe`: an alignment-handbook full-SFT recipe becomes a params file in one step, and
whatever still stands in its way is listed in one round."""

import subprocess
import sys
from pathlib import Path

import yaml

from sftlab import recipes

FIXTURE = Path(__file__).parent / "fixtures" / "recipe-zephyr-7b-beta-sft-full.yaml"  # handbook recipes/zephyr-7b-beta/sft/config_full.yaml


def test_a_handbook_recipe_maps_every_key_and_says_what_it_dropped(tmp_path):
    converted = recipes.convert(yaml.safe_load(FIXTURE.read_text(encoding="utf-8")), "zephyr")
    params = converted.params
    assert params["model"] == {"name_or_path": "mistralai/Mistral-7B-v0.1", "dtype": "bfloat16",
                               "chat_template": params["model"]["chat_template"]}
    assert "<|assistant|>" in params["model"]["chat_template"]
    assert params["data"]["train"] == [{"source": "HuggingFaceH4/ultrachat_200k", "split": "train_sft", "weight": 1.0},
                                       {"source": "HuggingFaceH4/ultrachat_200k", "split": "test_sft", "weight": 1.0}]
    assert params["data"]["test"] is None and params["data"]["test_size"] == 1000
    assert params["seed"] == 42
    train = params["train"]
    assert train["max_length"] == 2048 and train["use_reentrant"] is False and train["warmup_steps"] == 0.1
    assert train["eval_strategy"] == "epoch" and train["learning_rate"] == 2e-5
    for owned in ("output_dir", "push_to_hub", "hub_model_id", "hub_strategy", "overwrite_output_dir", "seed",
                  "attn_implementation", "gradient_checkpointing_kwargs", "max_seq_length"):
        assert owned not in train
    dropped = "\n".join(converted.dropped)
    for key in ("output_dir", "push_to_hub", "hub_model_id", "attn_implementation", "report_to: wandb",
                "dataset_num_proc", "overwrite_output_dir"):
        assert key in dropped, key


def test_import_recipe_writes_a_params_file_and_lists_every_remaining_problem_at_once(tmp_path):
    target = tmp_path / "params" / "zephyr.yaml"
    run = subprocess.run([sys.executable, "-m", "sftlab", "import-recipe", str(FIXTURE), "-o", str(target)],
                         capture_output=True, text=True, timeout=120, env={**__import__("os").environ,
                                                                          "HF_HUB_OFFLINE": "1"})
    assert target.exists(), run.stderr
    text = target.read_text(encoding="utf-8")
    assert text.startswith("# Imported from") and "# Dropped:" in text
    written = yaml.safe_load(text)
    assert written["experiment"] == "zephyr" and written["train"]["max_length"] == 2048
    # Offline, the 7B base model cannot be fetched: that is the one problem left, said in the same round.
    assert run.returncode == 1
    problems = [line for line in run.stderr.splitlines() if line.startswith(f"  {target}")]
    assert len(problems) == 1 and "model.name_or_path" in problems[0], run.stderr
