import ast
import json
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
    # An injected `base:` replaces the notebook's default params file.
    other = write(tmp_path / "other.yaml", "train:\n  learning_rate: 0.5\n")
    params = config.from_notebook(str(f), base=str(other), train={"max_steps": 2})
    assert (params.experiment, params.train.learning_rate) == ("other", 0.5)
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
    for params_file in (ROOT / "params").rglob("*.yaml"):
        # rubrics are not params; _*.yaml are a study's shared layers and joint-score settings.
        if "rubrics" not in params_file.parts and not params_file.name.startswith("_"):
            load_params(params_file)


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
