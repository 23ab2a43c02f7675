"""Which tokens carry loss, over the whole training set: every assistant turn, weight 0, overlong rows, tools,
templates; and the same decisions seen through the label audit and a real training run."""

import json

import pytest
import yaml
from conftest import tiny_params
from transformers import AutoTokenizer

from sftlab import data, train
from sftlab.config import ParamsError, load_params
from sftlab.train import audit, supervision

CONVERSATION = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Germany?"},
    {"role": "assistant", "content": "베를린입니다."},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome."},
]
ANSWERS = ["Paris.", "베를린입니다.", "Rome."]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path):
    return AutoTokenizer.from_pretrained(tiny_model_path)


def supervised_text(tokenizer, row) -> list[str]:
    """The supervised stretches of a tokenized row, decoded, in order."""
    pieces, current = [], []
    for token, loss in zip(row["input_ids"], row["completion_mask"]):
        if loss:
            current.append(token)
        elif current:
            pieces.append(tokenizer.decode(current))
            current = []
    if current:
        pieces.append(tokenizer.decode(current))
    return pieces


def test_every_assistant_turn_carries_loss_by_default(tokenizer):
    rows, report = supervision.tokenize([{"id": "a", "messages": CONVERSATION}], tokenizer)
    stretches = supervised_text(tokenizer, rows[0])
    assert [s.removesuffix("\n").removesuffix("<|im_end|>") for s in stretches] == ANSWERS
    assert all(s.endswith("<|im_end|>\n") for s in stretches)  # each answer's end-of-turn token is taught
    assert [p.trained for p in report.positions] == [1, 1, 1]
    assert report.end_of_turn_supervised == 3 and report.trained == report.rows == 1
    assert sum(p.supervised_tokens for p in report.positions) == report.supervised_tokens == sum(rows[0]["completion_mask"])


def test_turns_last_trains_only_the_final_answer(tokenizer):
    rows, report = supervision.tokenize([{"id": "a", "messages": CONVERSATION}], tokenizer, turns="last")
    assert supervised_text(tokenizer, rows[0]) == ["Rome.<|im_end|>\n"]
    assert [(p.trained, p.untrained_last_only) for p in report.positions] == [(0, 1), (0, 1), (1, 0)]
    assert "context only, turns: last" in report.summary()


def test_weight_zero_turns_are_masked_and_rows_without_a_trained_turn_are_counted(tokenizer):
    rows, report = supervision.tokenize(
        [{"id": "a", "messages": CONVERSATION, "untrained": [4]},
         {"id": "b", "messages": CONVERSATION[:3], "untrained": [2]}], tokenizer)
    assert [r["id"] for r in rows] == ["a"]
    assert [s.removesuffix("<|im_end|>\n") for s in supervised_text(tokenizer, rows[0])] == ["Paris.", "Rome."]
    # Row b is left out as a whole (counted there), so its answer is not counted per position.
    assert report.positions[1].untrained_weight0 == 1 and report.positions[0].untrained_weight0 == 0
    assert report.dropped == {"no answer to train (weight: 0 on every assistant turn)": 1}
    assert report.examples["no answer to train (weight: 0 on every assistant turn)"] == ["b"]


def test_loss_all_supervises_every_token(tokenizer):
    rows, report = supervision.tokenize([{"id": "a", "messages": CONVERSATION}], tokenizer, loss="all")
    assert all(rows[0]["completion_mask"]) and report.supervised_tokens == report.tokens


def long_rows(n_short=3):
    long_question = "word " * 200
    rows = [{"id": f"short-{i}", "messages": CONVERSATION[1:3]} for i in range(n_short)]
    rows.append({"id": "prompt-fills-it", "messages": [{"role": "user", "content": long_question},
                                                        {"role": "assistant", "content": "Yes."}]})
    rows.append({"id": "answer-too-long", "messages": [{"role": "user", "content": "Talk."},
                                                        {"role": "assistant", "content": long_question}]})
    return rows


def test_overlong_rows_are_refused_by_default_with_what_each_would_lose(tokenizer):
    with pytest.raises(supervision.SupervisionError) as e:
        supervision.tokenize(long_rows(), tokenizer, max_length=64)
    message = str(e.value)
    assert "2 of 5 training rows are longer than train.max_length=64" in message
    assert "prompt-fills-it" in message and "answer-too-long" in message
    assert "1 would lose every answer token" in message and "1 their end-of-turn token" in message
    assert "train.overlong: drop" in message


@pytest.mark.parametrize("policy, trained, dropped, truncated", [
    ("drop", 3, {"longer than max_length (overlong: drop)": 2}, {}),
    ("keep_start", 4, {"every answer cut away by max_length (overlong: keep_start)": 1},
     {"an answer's end-of-turn token cut away": 1}),
    ("keep_end", 5, {}, {"context cut, answers whole": 1, "part of an answer cut away": 1}),
])
def test_overlong_policies_count_every_row(tokenizer, policy, trained, dropped, truncated):
    rows, report = supervision.tokenize(long_rows(), tokenizer, max_length=64, overlong=policy)
    assert len(rows) == report.trained == trained and report.overlong == 2
    assert dict(report.dropped) == dropped and dict(report.truncated) == truncated
    assert all(len(r["input_ids"]) <= 64 and any(r["completion_mask"]) for r in rows)
    assert report.rows == report.trained + sum(report.dropped.values())
    if policy == "keep_end":  # the last answer keeps its end-of-turn token
        kept = {r["id"]: r for r in rows}["prompt-fills-it"]
        assert supervised_text(tokenizer, kept) == ["Yes.<|im_end|>\n"]


def test_tool_turns_need_a_template_that_renders_tools(tokenizer):
    row = {"id": "t", "messages": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "w", "arguments": {}}}]},
        {"role": "tool", "content": "sunny"},
        {"role": "assistant", "content": "Sunny."}]}
    with pytest.raises(supervision.SupervisionError, match="chat template does not render tools.*model.chat_template"):
        supervision.tokenize([row], tokenizer)


def test_a_template_that_rewrites_earlier_turns_needs_turns_last(tokenizer):
    tok = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    # Like reasoning templates: an earlier answer is shortened once later turns follow.
    tok.chat_template = ("{% for m in messages %}{% set c = m['content'] %}{% if m['role'] == 'assistant' and not loop.last %}"
                         "{% set c = c[:2] %}{% endif %}<|im_start|>{{ m['role'] }}\n{{ c }}<|im_end|>\n{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    with pytest.raises(supervision.SupervisionError, match="renders the conversation before answer 1 differently.*turns: last"):
        supervision.tokenize([{"id": "a", "messages": CONVERSATION}], tok)
    rows, _ = supervision.tokenize([{"id": "a", "messages": CONVERSATION}], tok, turns="last")
    assert supervised_text(tok, rows[0]) == ["Rome.<|im_end|>\n"]


# ----------------------------------------------------------------------------------------------
# Through the train stage: the audit, the params, a real run
# ----------------------------------------------------------------------------------------------


def prepared(params, examples, model_path):
    """The train stage's plan with its rows and config written, the lock held (no audit yet)."""
    planned = train.plan(params, examples, str(model_path))
    train.preflight(planned, label_audit=False)
    return planned


def audited(params, model_path, rows, **kwargs):
    """(the training rows, the label audit of the first `rows`), as the train stage's preflight runs it."""
    examples, _ = data.load_splits(params.data, params.seed)
    planned = prepared(params, examples, model_path)
    try:
        return examples, audit.run_label_audit(planned.config_path, rows=rows, **kwargs)
    finally:
        train.release(planned)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def multi_turn_params(tmp_path, model_path, n=6, **train_settings):
    rows = [{"id": f"conv-{i}", "messages": CONVERSATION} for i in range(n)]
    file = tiny_params(tmp_path, model_path, **train_settings)
    params = yaml.safe_load(file.read_text(encoding="utf-8"))
    params["data"]["train"] = str(write_jsonl(tmp_path / "multi.jsonl", rows))
    file.write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
    return load_params(file)


def test_the_label_audit_shows_every_answer_of_a_multi_turn_row_supervised(tmp_path, outputs, tiny_model_path):
    params = multi_turn_params(tmp_path, tiny_model_path)
    examples, result = audited(params, tiny_model_path, rows=2, html_path=tmp_path / "audit.html")
    row = result.rows[0]
    text = "".join(p for p, s in zip(row.pieces, row.supervised) if s)
    assert all(answer in text for answer in ANSWERS)  # the first and second answers carry loss too
    assert result.answer_ends == result.answer_ends_supervised == 3 * len(result.rows)
    assert [p.trained for p in result.data.positions] == [len(examples)] * 3
    page = (tmp_path / "audit.html").read_text(encoding="utf-8")
    assert "Supervision per answer" in page and "rows trained" in page


def test_the_audit_reports_the_whole_set_not_only_the_audited_rows(tmp_path, outputs, tiny_model_path):
    params = load_params(tiny_params(tmp_path, tiny_model_path, max_length=60, overlong="drop"))
    examples, result = audited(params, tiny_model_path, rows=4)
    assert result.data.rows == len(examples)
    assert result.data.trained + sum(result.data.dropped.values()) == len(examples)
    assert result.data.dropped["longer than max_length (overlong: drop)"] > 0
    assert f"{result.data.trained} of {len(examples)} rows trained" in result.summary()


def test_copied_trainer_keys_that_sftlab_owns_are_refused_all_at_once(tmp_path, outputs, tiny_model_path):
    file = tiny_params(tmp_path, tiny_model_path, output_dir="elsewhere", push_to_hub=True, hub_model_id="me/x",
                       seed=7, completion_only_loss=False, gradient_checkpointing_kwargs={"use_reentrant": True},
                       max_seq_length=512, warmup_ratio=0.1, lerning_rate=1)
    with pytest.raises(ParamsError) as e:
        load_params(file)
    message = str(e.value)
    for key, pointer in [("output_dir", "experiment:"), ("push_to_hub", "does not push"), ("hub_model_id", "does not push"),
                         ("seed", "top-level `seed:`"), ("completion_only_loss", "train.loss"),
                         ("gradient_checkpointing_kwargs", "train.use_reentrant"),
                         ("max_seq_length", "train.max_length"), ("warmup_ratio", "train.warmup_steps"),
                         ("lerning_rate", "did you mean 'train.learning_rate'")]:
        assert any(f"train.{key}" in line and pointer in line for line in message.splitlines()), (key, message)
    assert message.count(str(file)) == 9  # one line each, in one round


def test_a_tracker_that_is_not_installed_is_refused_at_params_time(tmp_path, outputs, tiny_model_path):
    with pytest.raises(ParamsError, match=r"train\.report_to: wandb is not installed.*pip install wandb"):
        load_params(tiny_params(tmp_path, tiny_model_path, report_to="wandb"))


def test_a_model_without_a_chat_template_trains_with_model_chat_template(tmp_path, outputs, tiny_model_path):
    import shutil

    bare = tmp_path / "bare-model"
    shutil.copytree(tiny_model_path, bare)
    for name in ("chat_template.jinja",):
        (bare / name).unlink(missing_ok=True)
    config = json.loads((bare / "tokenizer_config.json").read_text(encoding="utf-8"))
    config.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ParamsError, match=r"model.chat_template: not set, and .* has no chat template"):
        load_params(tiny_params(tmp_path, bare))  # said at params time, not a minute into the stage
    template = tmp_path / "chatml.jinja"
    template.write_text("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}", encoding="utf-8")
    file = tiny_params(tmp_path, bare)
    raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    raw["model"]["chat_template"] = str(template)
    file.write_text(yaml.safe_dump(raw), encoding="utf-8")
    _, result = audited(load_params(file), bare, rows=2)
    assert result.ok and result.end_of_turn == "<|im_end|>"


@pytest.mark.slow
def test_a_real_run_trains_every_counted_row_and_evaluates_on_the_test_rows(tmp_path, outputs, tiny_model_path):
    params = multi_turn_params(tmp_path, tiny_model_path, n=6, max_steps=2, save_steps=2,
                               per_device_train_batch_size=2, eval_strategy="steps", eval_steps=2)
    planned = train.plan(params)
    train.preflight(planned, echo=lambda line: None)
    assert planned.estimate()["rows"] == 6
    train.run(planned, echo=lambda line: None)
    summary = json.loads((planned.train_dir / "train_summary.json").read_text(encoding="utf-8"))
    assert summary["rows_trained"] == summary["rows_read"] == 6
    assert summary["epochs"] == pytest.approx(2 * 2 / 6, abs=1e-3)  # the steps over the rows really trained
    state = json.loads((planned.train_dir / "trainer_state.json").read_text(encoding="utf-8"))
    assert any("eval_loss" in entry for entry in state["log_history"])  # data.test is the eval set
    report = json.loads((planned.train_dir / "data_report.json").read_text(encoding="utf-8"))
    assert [t["trained"] for t in report["by_turn"]] == [6, 6, 6]
