"""Train stage: flat config, collators, label audit, real torchrun runs (1 process, 2-process FSDP), resume."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_params
from transformers import AutoModelForCausalLM, AutoTokenizer

from sftlab import checkpoints, data, jsonl, train
from sftlab.train import audit, launch, supervision, trainer
from sftlab.train import views as train_views
from sftlab.config import ParamsError, load_params


def plan_for(tmp_path, model_path, **train_settings):
    params = load_params(tiny_params(tmp_path, model_path, **train_settings))
    examples, _ = data.load_splits(params.data, params.seed)
    planned = train.plan(params, examples, str(model_path))
    train.preflight(planned, label_audit=False)
    return params, planned


# ----------------------------------------------------------------------------------------------
# Config and collators (no training)
# ----------------------------------------------------------------------------------------------


def test_flat_config_is_parsed_by_trlparser_into_sft_config(tmp_path, outputs, tiny_model_path):
    params, plan = plan_for(tmp_path, tiny_model_path, weight_decay=0.05, use_reentrant=True,
                            gradient_checkpointing=True)
    flat = yaml.safe_load(plan.config_path.read_text())
    assert flat["completion_only_loss"] is True and flat["report_to"] == "none"
    assert "fsdp" not in flat  # one process: no FSDP
    script_args, training_args = trainer.parse_args(["--config", str(plan.config_path)])
    assert script_args.model_name_or_path == str(tiny_model_path)
    assert script_args.pad_token == "eos" and script_args.collator == "trl"
    assert training_args.max_steps == 4 and training_args.learning_rate == 1e-3
    assert training_args.weight_decay == 0.05  # any SFTConfig key passes through
    assert training_args.bf16 is False  # CPU: fp32
    assert training_args.gradient_checkpointing_kwargs == {"use_reentrant": True}
    assert training_args.output_dir == str(outputs / "tiny" / "train")
    # use_cache goes off with gradient checkpointing.
    _, model = trainer.load_tokenizer_and_model(script_args, training_args)
    assert model.config.use_cache is False
    assert plan.command[1:4] == ["-m", "torch.distributed.run", "--nproc_per_node"]
    assert plan.command[-3:] == ["sftlab.train", "--config", str(plan.config_path)]


def test_multi_process_config_uses_fsdp_with_full_state_dicts(tmp_path, outputs, tiny_model_path):
    params, plan = plan_for(tmp_path, tiny_model_path, nproc_per_node=2)
    flat = yaml.safe_load(plan.config_path.read_text())
    assert flat["fsdp"] is True
    assert flat["fsdp_config"] == {"cpu_ram_efficient_loading": True, "state_dict_type": "FULL_STATE_DICT"}
    assert flat["env"]["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true"
    assert "--standalone" in plan.command and plan.command[plan.command.index("--nproc_per_node") + 1] == "2"


def test_multi_node_needs_an_endpoint_and_passes_it(tmp_path, outputs, tiny_model_path):
    with pytest.raises(ValueError, match="rdzv_endpoint"):
        plan_for(tmp_path, tiny_model_path, nnodes=2)
    _, plan = plan_for(tmp_path, tiny_model_path, nnodes=2, node_rank=1, rdzv_endpoint="node0:29400")
    command = " ".join(plan.command)
    assert "--nnodes 2 --node_rank 1 --rdzv_backend c10d --rdzv_endpoint node0:29400" in command


def test_plan_takes_no_lock_and_writes_nothing_the_preflight_does(tmp_path, outputs, tiny_model_path):
    params = load_params(tiny_params(tmp_path, tiny_model_path))
    planned = train.plan(params)
    assert not outputs.exists()  # no train/, no train.lock, no rows, no config
    assert planned.estimate()["rows"] > 0 and planned.estimate()["resume_from_step"] == 0
    train.preflight(planned, label_audit=False)
    assert planned.lock_path.exists() and yaml.safe_load(planned.config_path.read_text()) == planned.config
    assert len(jsonl.read_rows(planned.train_dir / "train.jsonl")) == planned.rows
    train.release(planned)
    assert not planned.lock_path.exists()


def test_legacy_collator_masks_every_pad_id_including_eos():
    eos = 2
    examples = [{"input_ids": [5, 6, 7, eos], "labels": [-100, 6, 7, eos]}, {"input_ids": [5, 8, eos]}]
    legacy = trainer.legacy_pad_masked_collator(pad_token_id=eos)(examples)
    assert legacy["labels"].tolist() == [[-100, 6, 7, -100], [5, 8, -100, -100]]
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    modern = DataCollatorForLanguageModeling(pad_token_id=eos)(examples)
    assert modern["labels"].tolist() == [[-100, 6, 7, eos], [5, 8, eos, -100]]


def test_pad_token_choices(tiny_model_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    vocab = model.get_input_embeddings().weight.shape[0]
    trainer.set_pad_token(tokenizer, model, "add")
    assert tokenizer.pad_token == trainer.ADDED_PAD_TOKEN and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.get_input_embeddings().weight.shape[0] >= len(tokenizer) > vocab
    assert model.config.pad_token_id == tokenizer.pad_token_id
    trainer.set_pad_token(tokenizer, model, "<|endoftext|>")
    assert tokenizer.pad_token_id == 0
    with pytest.raises(ValueError, match="not a token of the vocabulary"):
        trainer.set_pad_token(tokenizer, model, "<no-such-token>")


# ----------------------------------------------------------------------------------------------
# Label audit
# ----------------------------------------------------------------------------------------------


def test_audit_passes_when_end_of_turn_is_supervised(tmp_path, outputs, tiny_model_path):
    _, plan = plan_for(tmp_path, tiny_model_path)
    html_path = tmp_path / "audit.html"
    result = audit.run_label_audit(plan.config_path, rows=4, html_path=html_path)
    assert result.ok and result.answer_ends == 4 == result.answer_ends_supervised
    assert 0 < result.supervised_tokens < result.total_tokens  # completion-only: the prompt is masked
    page = html_path.read_text(encoding="utf-8")
    assert "taught to stop" in page and 'class="loss eot"' in page and 'class="masked eot"' not in page
    assert "수도" in "".join("".join(r.pieces) for r in result.rows) or "capital" in page


def test_audit_stops_the_origin_bug_and_explains_it(tmp_path, outputs, tiny_model_path):
    _, plan = plan_for(tmp_path, tiny_model_path, collator="legacy_pad_masked")
    html_path = tmp_path / "audit.html"
    with pytest.raises(audit.UnsupervisedEOSError) as e:
        audit.run_label_audit(plan.config_path, rows=4, html_path=html_path)
    message = str(e.value)
    assert "'<|im_end|>' carries no loss at 4 of 4 answer ends" in message
    assert "never be taught to stop" in message and "legacy_pad_masked" in message
    assert "train.pad_token: add" in message and "allow_unsupervised_eos" in message
    assert 'class="masked eot"' in html_path.read_text(encoding="utf-8")  # the token view is written anyway


def test_audit_allows_the_bug_on_purpose(tmp_path, outputs, tiny_model_path):
    _, plan = plan_for(tmp_path, tiny_model_path, collator="legacy_pad_masked")
    result = audit.run_label_audit(plan.config_path, rows=4, allow_unsupervised_eos=True)
    assert not result.ok and result.answer_ends_supervised == 0


def test_a_dedicated_pad_token_fixes_the_legacy_collator(tmp_path, outputs, tiny_model_path):
    _, plan = plan_for(tmp_path, tiny_model_path, collator="legacy_pad_masked", pad_token="add")
    result = audit.run_label_audit(plan.config_path, rows=4)
    assert result.ok and result.pad_token == trainer.ADDED_PAD_TOKEN


def test_audit_catches_answers_cut_by_max_length(tmp_path, outputs, tiny_model_path):
    _, plan = plan_for(tmp_path, tiny_model_path, max_length=40)
    with pytest.raises(supervision.SupervisionError, match=r"training rows are longer than train.max_length=40"):
        audit.run_label_audit(plan.config_path, rows=4)  # refused by default: nothing is cut silently
    train.release(plan)
    _, plan = plan_for(tmp_path, tiny_model_path, max_length=40, overlong="keep_start")
    with pytest.raises(audit.UnsupervisedEOSError, match="cut by max_length"):
        audit.run_label_audit(plan.config_path, rows=4)  # cut on purpose: the audit still says what that costs


def test_bfd_packing_with_the_legacy_collator_is_refused_at_params_time(tmp_path, outputs, tiny_model_path):
    file = tiny_params(tmp_path, tiny_model_path, collator="legacy_pad_masked")
    with pytest.raises(ParamsError, match=rf"{file} and --set: train.collator: legacy_pad_masked .* padding-free"):
        load_params(file, ["train.packing=bfd"])
    with pytest.raises(ParamsError, match=rf"--set: train.collator: legacy_pad_masked .* padding-free"):
        load_params(file, ["train.padding_free=true", "train.collator=legacy_pad_masked"])
    # A flat config written by hand (no schema in the way) meets the same rule in the training script.
    _, plan = plan_for(tmp_path, tiny_model_path, collator="legacy_pad_masked", packing="wrapped")
    config = yaml.safe_load(plan.config_path.read_text(encoding="utf-8"))
    config["packing_strategy"] = "bfd"
    plan.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    with pytest.raises(ValueError, match="padding-free"):
        audit.run_label_audit(plan.config_path, rows=4)


def test_a_pad_token_outside_the_vocabulary_is_refused_at_params_time(tmp_path, outputs, tiny_model_path):
    file = tiny_params(tmp_path, tiny_model_path)
    with pytest.raises(ParamsError, match=r"--set: train.pad_token: 'adds' is not a token of the vocabulary of"):
        load_params(file, ["train.pad_token=adds"])
    assert load_params(file, ["train.pad_token=<|endoftext|>"]).train.pad_token == "<|endoftext|>"


def test_train_knobs_keep_their_params_names_into_the_training_script(tmp_path, outputs, tiny_model_path):
    from sftlab.config import OWN_TRAIN_KEYS, TrainKnobs

    _, plan = plan_for(tmp_path, tiny_model_path, pad_token="add", collator="legacy_pad_masked")
    script_args, training_args = trainer.parse_args(["--config", str(plan.config_path)])
    for knob in launch.SCRIPT_KNOBS:
        assert getattr(script_args, knob) == getattr(plan.params.train, knob)
    assert training_args.pad_token is None  # SFTConfig's deprecated field is not a second pad-token knob
    assert OWN_TRAIN_KEYS == set(TrainKnobs.model_fields)
    flat = set(yaml.safe_load(plan.config_path.read_text()))
    # No launch or audit knob leaks into the trainer's arguments; `packing` there is SFTConfig's own bool.
    assert (OWN_TRAIN_KEYS - set(launch.SCRIPT_KNOBS)) & flat == {"packing"}


# ----------------------------------------------------------------------------------------------
# Real torchrun runs
# ----------------------------------------------------------------------------------------------


def generate_once(checkpoint: Path) -> list[int]:
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": "한국의 수도는?"}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


@pytest.mark.slow
def test_one_process_run_streams_its_log_and_writes_loadable_checkpoints(tmp_path, outputs, tiny_model_path):
    _, plan = plan_for(tmp_path, tiny_model_path, max_steps=3, save_steps=2)
    lines = []
    train.run(plan, echo=lines.append)
    assert any(line.startswith("[sftlab] step 1/3") for line in lines)
    log = plan.log_path.read_text(encoding="utf-8")
    assert "[sftlab] step 3/3" in log and "torch.distributed.run" in log
    # save_steps=2, max_steps=3: the last step is saved as well.
    assert [c.name for c in checkpoints.list_checkpoints(plan.train_dir)] == ["checkpoint-2", "checkpoint-3"]
    last = plan.train_dir / "checkpoint-3"
    tokenizer = AutoTokenizer.from_pretrained(last)
    assert tokenizer.pad_token == "<|im_end|>" and tokenizer.chat_template
    generation = json.loads((last / "generation_config.json").read_text())
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in generation["eos_token_id"]
    assert generate_once(last)
    curves = train_views.training_curves(plan.train_dir)
    assert list(curves["step"]) == [1, 2, 3] and curves["grad_norm"].notna().all()
    summary = json.loads((plan.train_dir / "train_summary.json").read_text())
    assert summary["global_step"] == 3 and summary["tokens_per_s"] > 0 and summary["peak_rss_mib"] > 0


@pytest.mark.slow
def test_a_second_launch_with_the_same_config_trains_nothing(tmp_path, outputs, tiny_model_path):
    params, plan = plan_for(tmp_path, tiny_model_path, max_steps=2)
    train.run(plan, echo=lambda line: None)
    assert (plan.train_dir / "curves.png").stat().st_size > 0  # run writes the figure, the notebook shows it
    log = plan.log_path.read_text(encoding="utf-8")
    # The same plan run again (a notebook cell run twice): nothing launched, nothing written.
    before = {p: p.stat().st_mtime_ns for p in plan.train_dir.rglob("*")}
    lines = []
    assert train.run(plan, echo=lines.append).skipped
    assert lines and "nothing to do" in lines[0]
    assert plan.log_path.read_text(encoding="utf-8") == log
    assert {p: p.stat().st_mtime_ns for p in plan.train_dir.rglob("*")} == before
    # A new plan of the same config: nothing to do either.
    examples, _ = data.load_splits(params.data, params.seed)
    again = train.plan(params, examples, str(tiny_model_path))
    assert again.skip
    lines = []
    train.run(again, echo=lines.append)
    assert lines and "nothing to do" in lines[0]
    # A changed config over existing checkpoints is refused at planning, not mixed in.
    changed = load_params(tiny_params(tmp_path, tiny_model_path, max_steps=2, learning_rate=0.5))
    with pytest.raises(ValueError, match="changed: learning_rate"):
        train.plan(changed, examples, str(tiny_model_path))


@pytest.mark.slow
def test_failing_training_raises_with_the_log_tail(tmp_path, outputs, tiny_model_path):
    _, plan = plan_for(tmp_path, tiny_model_path)
    train.preflight(plan, echo=lambda line: None)  # audited: what fails below is the training process itself
    config = yaml.safe_load(plan.config_path.read_text())
    config["model_name_or_path"] = str(tmp_path / "no-such-model")
    plan.config_path.write_text(yaml.safe_dump(config))
    with pytest.raises(train.TrainingFailed) as e:
        train.run(plan, echo=lambda line: None)
    message = str(e.value)
    assert "exited with code" in message and str(plan.log_path) in message
    assert "no-such-model" in message  # the child's own error is in the tail


@pytest.mark.slow
def test_two_process_fsdp_on_cpu_saves_full_checkpoints(tmp_path, outputs, tiny_model_path):
    _, plan = plan_for(tmp_path, tiny_model_path, nproc_per_node=2, max_steps=2, save_steps=2)
    train.run(plan, echo=lambda line: None)
    log = plan.log_path.read_text(encoding="utf-8")
    assert "[sftlab] step 2/2" in log
    summary = json.loads((plan.train_dir / "train_summary.json").read_text())
    assert summary["world_size"] == 2
    last = plan.train_dir / "checkpoint-2"
    assert (last / "model.safetensors").exists()  # a full state dict, not per-rank shards
    trained = AutoModelForCausalLM.from_pretrained(last)
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    assert any(not torch.equal(a, b) for a, b in zip(trained.parameters(), initial.parameters()))
    assert generate_once(last)


@pytest.mark.slow
def test_resume_after_sigkill_logs_and_counts_as_an_uninterrupted_run(tmp_path, outputs, tiny_model_path):
    """Kill a real launch (SIGKILL to its process group) once it has a checkpoint, resume it, and compare with the
    same config trained uninterrupted in another experiment: every step logged once, the token counters counted
    on from the checkpoint's, the summary's counts those of the whole run."""
    params, plan = plan_for(tmp_path, tiny_model_path, max_steps=12, save_steps=3)
    with open(tmp_path / "first.log", "w") as log:
        process = subprocess.Popen(plan.command, stdout=log, stderr=subprocess.STDOUT, env=launch.child_env(),
                                   start_new_session=True)
        deadline = time.time() + 240
        while not checkpoints.list_checkpoints(plan.train_dir) and time.time() < deadline:
            assert process.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    first = checkpoints.list_checkpoints(plan.train_dir)
    assert first, "no checkpoint before the deadline"
    killed_at = checkpoints.step_of(first[-1])
    assert killed_at < 12

    lines = []
    train.run(plan, echo=lines.append)
    assert any("resuming from" in line and line.endswith(first[-1].name) for line in lines)
    state = json.loads((plan.train_dir / "trainer_state.json").read_text())
    assert state["global_step"] == 12
    logged = [e["step"] for e in state["log_history"] if "loss" in e]
    assert logged == list(range(1, 13))  # every step once: nothing lost, nothing repeated
    tokens = [e["num_tokens"] for e in state["log_history"] if "num_tokens" in e]
    assert len(tokens) == 12 and all(a < b for a, b in zip(tokens, tokens[1:]))  # counted on, not from 0
    resumed = json.loads((plan.train_dir / "train_summary.json").read_text())
    assert resumed["tokens"] == tokens[-1] and resumed["resumed_from_step"] == killed_at

    whole_params = load_params(tiny_params(tmp_path, tiny_model_path, max_steps=12, save_steps=3), ["experiment=whole"])
    examples, _ = data.load_splits(whole_params.data, whole_params.seed)
    whole_plan = train.plan(whole_params, examples, str(tiny_model_path))
    train.preflight(whole_plan, label_audit=False)
    train.run(whole_plan, echo=lambda line: None)
    whole = json.loads((whole_plan.train_dir / "train_summary.json").read_text())
    whole_log = json.loads((whole_plan.train_dir / "trainer_state.json").read_text())["log_history"]
    assert tokens == [e["num_tokens"] for e in whole_log if "num_tokens" in e]  # the same batches, the same counts
    assert whole["resumed_from_step"] is None
    for key in ("global_step", "tokens", "supervised_tokens", "padding_fraction"):
        assert resumed[key] == whole[key], key  # the whole run's counts, not this launch's
    assert resumed["tokens_per_s"] > 0 and resumed["supervised_tokens"] > 0


def test_padding_free_packing_keeps_sequences_apart_on_this_device(tiny_model_path):
    """bfd packing trains padding-free: one row, position ids restarting per sequence. It is only
    correct if attention does not cross sequences; on this device (sdpa) packed == separate."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    first, second = [1, 57, 203, 9, 2], [1, 4093, 198, 77]
    with torch.inference_mode():
        alone = [model(torch.tensor([ids])).logits[0] for ids in (first, second)]
        positions = torch.tensor([list(range(len(first))) + list(range(len(second)))])
        # use_cache=False as in training: transformers only derives the block mask without a KV cache.
        packed = model(input_ids=torch.tensor([first + second]), position_ids=positions, use_cache=False).logits[0]
    assert torch.allclose(packed[:len(first)], alone[0], atol=1e-5)
    assert torch.allclose(packed[len(first):], alone[1], atol=1e-5)


@pytest.mark.slow
def test_bfd_packing_audits_and_trains(tmp_path, outputs, tiny_model_path):
    _, plan = plan_for(tmp_path, tiny_model_path, packing="bfd", max_steps=2, save_steps=2)
    result = audit.run_label_audit(plan.config_path, rows=6)
    assert len(result.rows) < 6  # several rows share one packed sequence
    assert result.ok and result.answer_ends == 6
    train.run(plan, echo=lambda line: None)
    assert checkpoints.list_checkpoints(plan.train_dir)[-1].name == "checkpoint-2"
