import ast
import json
import re
from pathlib import Path

import pytest
import yaml

from sftlab import config
from sftlab.config import ParamsError, load_params

ROOT = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_demo_params_validate():
    params = load_params(ROOT / "params" / "demo.yaml")
    assert params.experiment == "demo"
    assert params.model.name_or_path == "builtin:smollm2-135m-instruct"
    assert params.train.max_steps > 0


def test_base_is_deep_merged_relative_to_the_file(tmp_path):
    write(tmp_path / "base.yaml", "experiment: b\nseed: 1\ntrain:\n  max_steps: 10\n  learning_rate: 1.0e-4\n"
          "score:\n  experiments: [a, b]\n")
    write(tmp_path / "study" / "x.yaml", "base: ../base.yaml\nexperiment: x\ntrain:\n  max_steps: 5\n"
          "score:\n  experiments: [c]\n")
    params = load_params(tmp_path / "study" / "x.yaml")
    assert params.experiment == "x"
    assert params.seed == 1  # from the base
    assert params.train.max_steps == 5  # overridden
    assert params.train.learning_rate == 1e-4  # kept: mappings merge key by key
    assert params.score.experiments == ["c"]  # lists replace


def test_base_chain_and_loop(tmp_path):
    write(tmp_path / "a.yaml", "seed: 7\n")
    write(tmp_path / "b.yaml", "base: a.yaml\ntrain: {max_steps: 3}\n")
    write(tmp_path / "c.yaml", "base: b.yaml\n")
    params = load_params(tmp_path / "c.yaml")
    assert (params.seed, params.train.max_steps, params.experiment) == (7, 3, "c")

    write(tmp_path / "loop1.yaml", "base: loop2.yaml\n")
    write(tmp_path / "loop2.yaml", "base: loop1.yaml\n")
    with pytest.raises(ParamsError, match="loops"):
        load_params(tmp_path / "loop1.yaml")


def test_missing_base_names_it(tmp_path):
    f = write(tmp_path / "x.yaml", "base: nowhere.yaml\n")
    with pytest.raises(ParamsError, match=r"x\.yaml: base: .*nowhere\.yaml does not exist"):
        load_params(f)


def test_overrides_are_typed_and_nested(tmp_path):
    f = write(tmp_path / "x.yaml", "train:\n  max_steps: 10\n")
    params = load_params(f, ["train.max_steps=5", "train.gradient_checkpointing=false",
                             "infer.checkpoints=[checkpoint-5]", "judge.max_cost_usd=0.5", "experiment=renamed"])
    assert params.train.max_steps == 5
    assert params.train.gradient_checkpointing is False
    assert params.infer.checkpoints == ["checkpoint-5"]
    assert params.judge.max_cost_usd == 0.5
    assert params.experiment == "renamed"


def test_unknown_key_names_key_file_and_closest(tmp_path):
    write(tmp_path / "base.yaml", "infer:\n  batch_size: 4\n")
    f = write(tmp_path / "x.yaml", "base: base.yaml\ninfer:\n  max_new_token: 32\n")
    with pytest.raises(ParamsError) as e:
        load_params(f)
    message = str(e.value)
    assert "x.yaml" in message and "base.yaml" not in message
    assert "unknown key 'infer.max_new_token'" in message
    assert "did you mean 'infer.max_new_tokens'" in message


def test_unknown_key_in_base_names_the_base(tmp_path):
    write(tmp_path / "base.yaml", "modle:\n  name_or_path: x\n")
    f = write(tmp_path / "x.yaml", "base: base.yaml\n")
    with pytest.raises(ParamsError, match=r"base\.yaml: unknown key 'modle'; did you mean 'model'"):
        load_params(f)


def test_train_accepts_sft_config_fields_and_rejects_others(tmp_path):
    f = write(tmp_path / "x.yaml", "train:\n  weight_decay: 0.01\n  lr_scheduler_type: cosine\n")
    params = load_params(f)
    assert params.train.model_extra == {"weight_decay": 0.01, "lr_scheduler_type": "cosine"}
    with pytest.raises(ParamsError, match=r"--set: unknown key 'train.weight_decays'; did you mean 'train.weight_decay'"):
        load_params(f, ["train.weight_decays=0.1"])


def test_wrong_type_names_field_and_expected_type(tmp_path):
    f = write(tmp_path / "x.yaml", "train:\n  max_steps: five\ninfer:\n  do_sample: maybe\n")
    with pytest.raises(ParamsError) as e:
        load_params(f)
    message = str(e.value)
    assert "train.max_steps: expected an integer, got 'five'" in message
    assert "infer.do_sample: expected true or false, got 'maybe'" in message
    assert "x.yaml" in message
    with pytest.raises(ParamsError, match=r"train.nproc_per_node: expected an integer or 'auto', got 'many'"):
        load_params(f, ["train.max_steps=1", "infer.do_sample=true", "train.nproc_per_node=many"])


def test_yaml_is_read_safely(tmp_path):
    f = write(tmp_path / "x.yaml", "experiment: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ParamsError, match=r"x\.yaml: not valid YAML"):
        load_params(f)


def test_malformed_yaml_and_non_mapping(tmp_path):
    with pytest.raises(ParamsError, match=r"bad\.yaml: not valid YAML"):
        load_params(write(tmp_path / "bad.yaml", "train: [unclosed\n"))
    with pytest.raises(ParamsError, match=r"list\.yaml: expected a mapping"):
        load_params(write(tmp_path / "list.yaml", "- a\n- b\n"))
    with pytest.raises(ParamsError, match=r"file not found"):
        load_params(tmp_path / "absent.yaml")


def test_bad_override_syntax(tmp_path):
    f = write(tmp_path / "x.yaml", "")
    with pytest.raises(ParamsError, match="expected KEY=VALUE"):
        load_params(f, ["train.max_steps"])


def test_write_resolved_round_trips(tmp_path, outputs):
    f = write(tmp_path / "x.yaml", "experiment: rt\ntrain:\n  max_steps: 3\n  weight_decay: 0.1\n")
    params = load_params(f, ["seed=9"])
    written = config.write_resolved(params)
    assert written == outputs / "rt" / "config.resolved.yaml"
    again = load_params(written)
    assert again == params
    assert not list(written.parent.glob("*.tmp"))


def test_from_notebook_merges_injected_sections_over_the_params_file(tmp_path):
    f = write(tmp_path / "defaults.yaml", "experiment: nb\ntrain:\n  max_steps: 10\n  learning_rate: 0.001\n")
    params = config.from_notebook(str(f), experiment=None, base=None, seed=3, model={}, train={"max_steps": 2})
    assert (params.experiment, params.seed, params.train.max_steps, params.train.learning_rate) == ("nb", 3, 2, 0.001)
    # An injected `base:` replaces the notebook's default params file; it never names the experiment.
    other = write(tmp_path / "other.yaml", "experiment: other\ntrain:\n  learning_rate: 0.5\n")
    params = config.from_notebook(str(f), base=str(other), experiment="mine", train={"max_steps": 2})
    assert (params.experiment, params.train.learning_rate) == ("mine", 0.5)
    with pytest.raises(ParamsError, match=r"notebook parameters: experiment: not given, and never taken from a base"):
        config.from_notebook(str(f), base=str(other), train={"max_steps": 2})
    with pytest.raises(ParamsError, match=r"notebook parameters: unknown key 'train.max_step'"):
        config.from_notebook(str(f), train={"max_step": 2})


def _declared_parameters(notebook: Path) -> set[str]:
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    cell = next(c for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))
    tree = ast.parse("".join(cell["source"]))
    return {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets}


def test_every_params_key_is_a_notebook_parameter():
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks
    params_files = [p for p in (ROOT / "params").rglob("*.yaml") if "rubrics" not in p.parts]
    assert params_files
    for notebook in notebooks:
        declared = _declared_parameters(notebook)
        assert set(config.TOP_LEVEL_KEYS) <= declared, notebook
        for params_file in params_files:
            keys = set(yaml.safe_load(params_file.read_text(encoding="utf-8")) or {})
            assert keys <= declared, f"{params_file}: {keys - declared} not declared in {notebook.name}"


def test_every_params_file_validates():
    # rubrics are not params; _*.yaml are a study's shared layers and joint-score settings.
    files = sorted(p for p in (ROOT / "params").rglob("*.yaml")
                   if "rubrics" not in p.relative_to(ROOT).parts and not p.name.startswith("_"))
    names = {p.relative_to(ROOT / "params").as_posix() for p in files}
    assert {"demo.yaml", "studies/collator/baseline.yaml", "studies/collator/collator.yaml"} <= names, names
    loaded = {p.relative_to(ROOT / "params").as_posix(): load_params(p) for p in files}
    assert loaded["demo.yaml"].experiment == "demo"
    assert all(params.experiment == Path(name).stem for name, params in loaded.items())


def test_the_collator_study_varies_only_the_collator_knobs():
    study = ROOT / "params" / "studies" / "collator"
    variants = {p.stem: load_params(p) for p in sorted(study.glob("[!_]*.yaml"))}
    assert set(variants) == {"baseline", "collator", "collator_padfix", "trl_completion"}
    knobs = {name: (p.train.loss, p.train.collator, p.train.pad_token) for name, p in variants.items()}
    assert knobs == {"baseline": ("all", "trl", "eos"), "collator": ("completion", "legacy_pad_masked", "eos"),
                     "collator_padfix": ("completion", "legacy_pad_masked", "add"),
                     "trl_completion": ("completion", "trl", "eos")}
    assert variants["collator"].train.allow_unsupervised_eos
    shared = {name: p.to_dict() for name, p in variants.items()}
    for data in shared.values():
        data.pop("experiment")
        for key in ("loss", "collator", "pad_token", "allow_unsupervised_eos"):
            data["train"].pop(key)
    assert all(d == shared["baseline"] for d in shared.values())  # everything else is the same


# --------------------------------------------------------------------------------------------
# Mistakes caught at params time (issue 16): each names its source (file or --set) and its field
# --------------------------------------------------------------------------------------------


def test_trainer_field_values_are_checked_at_params_time(tmp_path):
    f = write(tmp_path / "x.yaml", "train:\n  lr_scheduler_type: cosin\n  fp16: maybe\n  warmup_steps: 1e-2\n")
    with pytest.raises(ParamsError) as e:
        load_params(f)
    message = str(e.value)
    assert f"{f}: train.lr_scheduler_type: expected one of 'linear', 'cosine'" in message
    assert "got 'cosin'; did you mean 'cosine'?" in message
    assert f"{f}: train.fp16: expected true or false, got 'maybe'" in message
    assert "warmup_steps" not in message  # "1e-2" is a float to argparse, as it is to the trainer
    with pytest.raises(ParamsError, match=r"--set: train.weight_decay: expected a number, got 'heavy'"):
        load_params(f, ["train.lr_scheduler_type=cosine", "train.fp16=false", "train.weight_decay=heavy"])
    with pytest.raises(ParamsError, match=r"--set: train.save_total_limit: expected an integer, got 1.5"):
        load_params(f, ["train.lr_scheduler_type=cosine", "train.fp16=false", "train.save_total_limit=1.5"])
    params = load_params(f, ["train.lr_scheduler_type=cosine", "train.fp16=no", "train.weight_decay=0.1",
                             "train.label_names=[labels]", "train.lr_scheduler_kwargs={num_cycles: 2}"])
    assert params.train.model_extra["weight_decay"] == 0.1


@pytest.mark.parametrize("field, value", [
    ("weight_decay", "heavy"), ("weight_decay", "0.1"), ("lr_scheduler_type", "cosin"), ("optim", "adamw"),
    ("fp16", "maybe"), ("fp16", "false"), ("save_total_limit", "two"), ("logging_strategy", 5),
    ("include_num_input_tokens_seen", "all"), ("liger_kernel_config", "x"), ("lr_scheduler_kwargs", {"a": 1}),
    ("adam_beta1", "1e-1"), ("label_names", ["a", "b"]),
])
def test_trainer_field_check_agrees_with_the_training_parser(tmp_path, field, value):
    """What sftlab.trainer_fields refuses, the training process's TrlParser refuses too (SystemExit: 2 or a
    ValueError from SFTConfig), and the other way round."""
    import contextlib
    import io

    from sftlab import trainer_fields
    from sftlab.train import trainer

    path = write(tmp_path / "c.yaml", yaml.safe_dump({"model_name_or_path": "m", "train_file": "t",
                                                       "output_dir": str(tmp_path), field: value}))
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            trainer.parse_args(["--config", str(path)])
        refused = False
    except (SystemExit, ValueError):
        refused = True
    assert (trainer_fields.problem(field, value) is not None) == refused


def test_trainer_fields_are_read_once_and_cached(tmp_path, monkeypatch):
    from sftlab import trainer_fields

    cache = tmp_path / "cache" / "fields.json"
    monkeypatch.setattr(trainer_fields, "cache_file", lambda: cache)
    trainer_fields.fields.cache_clear()
    try:
        built = trainer_fields.fields()  # from the real parser: imports trl
        assert json.loads(cache.read_text(encoding="utf-8"))["fields"] == built
        assert built["weight_decay"] == {"kind": "float", "list": False}
        assert "pad_token" not in built  # SFTArguments drops TRL's deprecated pad_token: train.pad_token is ours
        trainer_fields.fields.cache_clear()
        monkeypatch.setattr(trainer_fields, "describe", lambda: pytest.fail("read again instead of cached"))
        assert trainer_fields.fields() == built
    finally:
        trainer_fields.fields.cache_clear()


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache, and the hub unreachable."""
    from sftlab import models

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(models, "_HUB_REACHABLE", {})
    monkeypatch.setattr(models, "_reachable", lambda url: False)
    return tmp_path / "hf-cache"


def test_a_model_that_is_not_there_fails_at_params_time(tmp_path, monkeypatch, offline_hub):
    f = write(tmp_path / "x.yaml", "model:\n  name_or_path: no-such-model\n")
    with pytest.raises(ParamsError) as e:
        load_params(f)
    message = str(e.value)
    assert f"{f}: model.name_or_path: no such folder: " in message and "no-such-model" in message
    assert "cannot be fetched: https://huggingface.co cannot be reached" in message
    assert str(offline_hub) in message  # where it looked for a cached copy
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ParamsError, match=r"--set: model.name_or_path: .*HF_HUB_OFFLINE is set"):
        load_params(f, ["model.name_or_path=org/model"])
    # A hub id already in the cache loads offline.
    snapshot = offline_hub / "models--org--model" / "snapshots" / "abc123"
    write(snapshot / "config.json", "{}")
    assert load_params(f, ["model.name_or_path=org/model"]).model.name_or_path == "org/model"
    # Names that can only be folders must exist, online or not.
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr("sftlab.models._HUB_REACHABLE", {})
    monkeypatch.setattr("sftlab.models._reachable", lambda url: True)
    for path in ("./no-such-model", "~/no-such-model", "a/b/c", str(tmp_path / "nowhere"), "tests/no-such-model"):
        with pytest.raises(ParamsError, match=r"--set: model.name_or_path: no such folder"):
            load_params(f, [f"model.name_or_path={path}"])
    with pytest.raises(ParamsError, match=r"has no config.json: not a model folder"):
        load_params(f, [f"model.name_or_path={tmp_path}"])
    with pytest.raises(ParamsError, match=r"unknown builtin model 'nope'"):
        load_params(f, ["model.name_or_path=builtin:nope"])
    # Online, a name that is not on disk may be a hub id: the hub decides.
    assert load_params(f).model.name_or_path == "no-such-model"


def test_experiment_is_never_inherited_through_base(tmp_path):
    write(tmp_path / "demo.yaml", "experiment: demo\nseed: 5\n")
    write(tmp_path / "middle.yaml", "base: demo.yaml\ntrain:\n  max_steps: 3\n")
    variant = write(tmp_path / "variant.yaml", "base: middle.yaml\n")
    params = load_params(variant)
    assert (params.experiment, params.seed, params.train.max_steps) == ("variant", 5, 3)
    assert load_params(tmp_path / "middle.yaml").experiment == "middle"
    assert load_params(variant, ["experiment=named"]).experiment == "named"
    # The repository's studies name every variant themselves; their shared layer is not an experiment.
    for study_file in (ROOT / "params" / "studies").rglob("[!_]*.yaml"):
        assert load_params(study_file).experiment == study_file.stem


def test_experiment_names_stay_inside_outputs(tmp_path):
    f = write(tmp_path / "x.yaml", "score:\n  experiments: [demo, '../..']\n")
    with pytest.raises(ParamsError) as e:
        load_params(f)
    assert f"{f}: score.experiments[1]: '../..' is not an experiment name" in str(e.value)
    for override, field in (("score.experiments=[/tmp]", "score.experiments[0]"),
                            ("score.baseline=../other/base", "score.baseline"),
                            ("score.observations={..: seen}", "score.observations"),
                            ("experiment=..", "experiment")):
        with pytest.raises(ParamsError, match=rf"--set: {re.escape(field)}.*is not an experiment name"):
            load_params(f, ["score.experiments=[demo]", override])
    params = load_params(f, ["score.experiments=[demo, a.b_c-1]", "score.baseline=demo/checkpoint-10"])
    assert params.score.experiments == ["demo", "a.b_c-1"]


def test_override_mistakes_name_the_override(tmp_path):
    f = write(tmp_path / "x.yaml", "train:\n  max_steps: 10\n")
    with pytest.raises(ParamsError, match=r"--set 'train..max_steps=5': empty key between dots"):
        load_params(f, ["train..max_steps=5"])
    with pytest.raises(ParamsError, match=r"--set: unknown key 'trian'; did you mean 'train'"):
        load_params(f, ["trian.max_steps=5"])
    with pytest.raises(ParamsError, match=r"--set: unknown key 'infer.batch'"):
        load_params(f, ["infer.batch.size=5"])
