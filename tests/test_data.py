"""sftlab.data: reading every format, validating rows, error messages, seeded splits."""

from __future__ import annotations

import gzip
import json
import re
import sys
from pathlib import Path

import pandas as pd
import pytest

from sftlab import data, paths
from sftlab.config import ColumnMap, DataParams
from sftlab.data import DataError, Example, load_examples, load_splits, normalize, read_rows

COLUMNS = ColumnMap()

QA_ROWS = [
    {"id": "q1", "lang": "en", "category": "capital", "question": "Capital of France?", "answer": "Paris."},
    {"id": "q2", "lang": "ko", "category": "math", "question": "1+1?", "answer": "2입니다."},
]
MESSAGE_ROWS = [
    {"id": "q1", "lang": "en", "category": "capital", "messages": [
        {"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}]},
    {"id": "q2", "lang": "ko", "category": "math", "messages": [
        {"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2입니다."}]},
]
EXPECTED_MESSAGES = [
    [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}],
    [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2입니다."}],
]


def write_jsonl(path: Path, rows: list, blank_after: int | None = None) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows]
    if blank_after is not None:
        lines.insert(blank_after, "   ")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write(tmp_path: Path, fmt: str, rows: list[dict], name: str = "rows") -> Path:
    """Write `rows` in one of the supported layouts; returns the file."""
    if fmt == "jsonl":
        return write_jsonl(tmp_path / f"{name}.jsonl", rows)
    path = tmp_path / f"{name}.{fmt.split('-')[0]}"
    if fmt == "json-list":
        path.write_text(json.dumps(rows, ensure_ascii=False, indent=2), encoding="utf-8")
    elif fmt == "json-data":
        path.write_text(json.dumps({"data": rows}, ensure_ascii=False), encoding="utf-8")
    elif fmt == "json-lines":
        write_jsonl(path, rows)
    elif fmt == "csv":
        # A CSV cell holds a messages list as JSON text.
        flat = [{k: json.dumps(v, ensure_ascii=False) if isinstance(v, list) else v for k, v in r.items()}
                for r in rows]
        pd.DataFrame(flat).to_csv(path, index=False)
    elif fmt == "parquet":
        pd.DataFrame(rows).to_parquet(path)
    elif fmt in ("jsonl-gz", "json-gz"):
        path = tmp_path / f"{name}.{fmt.replace('-', '.')}"
        text = "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) if fmt == "jsonl-gz" else json.dumps(rows)
        path.write_bytes(gzip.compress(text.encode("utf-8")))
    elif fmt in ("saved-dataset", "saved-dict"):
        import datasets

        dataset = datasets.Dataset.from_list(rows)
        path = tmp_path / name
        (datasets.DatasetDict({"train": dataset}) if fmt == "saved-dict" else dataset).save_to_disk(str(path))
    return path


def error_of(call, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        call(*args, **kwargs)
    return str(info.value)


# --------------------------------------------------------------------------------------------
# Formats and row forms
# --------------------------------------------------------------------------------------------

FORMATS = ["jsonl", "json-list", "json-data", "json-lines", "csv", "parquet", "jsonl-gz", "json-gz", "saved-dataset",
           "saved-dict"]


@pytest.mark.parametrize("form", ["qa", "messages"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_and_row_form(tmp_path, fmt, form):
    path = write(tmp_path, fmt, QA_ROWS if form == "qa" else MESSAGE_ROWS)
    examples = load_examples(str(path), "train", COLUMNS)
    assert [e.id for e in examples] == ["q1", "q2"]
    assert [e.messages for e in examples] == EXPECTED_MESSAGES
    assert [e.meta for e in examples] == [{"lang": "en", "category": "capital"}, {"lang": "ko", "category": "math"}]
    label = f"{path}[train]" if fmt == "saved-dict" else str(path)
    assert [e.source for e in examples] == [f"{label}:1", f"{label}:2"]
    assert examples[1].prompt == [{"role": "user", "content": "1+1?"}]
    assert examples[1].reference == "2입니다."


def test_read_rows_gives_raw_rows_with_locations(tmp_path):
    path = write_jsonl(tmp_path / "raw.jsonl", QA_ROWS)
    assert read_rows(str(path)) == [(f"{path}:1", QA_ROWS[0]), (f"{path}:2", QA_ROWS[1])]


def test_relative_path_resolves_from_project_root(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "rel.jsonl", QA_ROWS)
    monkeypatch.setenv("SFTLAB_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path.parent)  # not found from here, so the root is tried
    examples = load_examples("data/rel.jsonl", "train", COLUMNS)
    assert examples[0].source == "data/rel.jsonl:1"
    assert paths.resolve("data/rel.jsonl") == (tmp_path / "data" / "rel.jsonl").resolve()


def test_blank_lines_are_skipped_and_line_numbers_kept(tmp_path):
    path = write_jsonl(tmp_path / "gaps.jsonl", QA_ROWS, blank_after=1)
    examples = load_examples(str(path), "train", COLUMNS)
    assert [e.source for e in examples] == [f"{path}:1", f"{path}:3"]


def test_ids_are_made_up_from_file_and_row_when_there_is_no_id_column(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "id"} for r in QA_ROWS]
    path = write_jsonl(tmp_path / "noid.jsonl", rows, blank_after=1)
    first = load_examples(str(path), "train", COLUMNS)
    assert re.fullmatch(r"noid-[0-9a-f]{6}-00001", first[0].id) and first[1].id == first[0].id[:-1] + "3"
    assert [e.id for e in load_examples(str(path), "train", COLUMNS)] == [e.id for e in first]  # stable
    assert re.fullmatch(r"some-[0-9a-f]{6}-00007", normalize("x/some.csv:7", rows[0], COLUMNS).id)
    assert normalize("x/some.csv:7", rows[0], COLUMNS, fallback_id="mine").id == "mine"


def test_csv_cells_are_text(tmp_path):
    path = tmp_path / "text.csv"
    path.write_text('id,question,answer,system\n7,"Say NA\non two lines",NA,\n', encoding="utf-8")
    [example] = load_examples(str(path), "train", COLUMNS)
    assert example.id == "7"
    assert example.messages == [{"role": "user", "content": "Say NA\non two lines"},
                                {"role": "assistant", "content": "NA"}]  # empty system cell: no system


def test_json_lines_keep_u2028_inside_strings(tmp_path):
    path = tmp_path / "sep.jsonl"
    row = {"id": "a", "question": "one\u2028two", "answer": "ok"}
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    assert load_examples(str(path), "train", COLUMNS)[0].messages[0]["content"] == "one\u2028two"


def test_column_mapping(tmp_path):
    columns = ColumnMap(id="qid", question="prompt", answer="response", system="persona", messages="conversation")
    qa = write_jsonl(tmp_path / "qa.jsonl", [
        {"qid": 1, "prompt": "Hi?", "response": "Hello.", "persona": "Be kind.", "id": "other"}])
    [example] = load_examples(str(qa), "train", columns)
    assert example.id == "1"
    assert example.messages == [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi?"},
                                {"role": "assistant", "content": "Hello."}]
    assert example.meta == {"id": "other"}
    assert data.to_records([example])[0] == {"id": "1", "messages": example.messages, "meta.id": "other"}

    chat = write_jsonl(tmp_path / "chat.jsonl", [{"qid": "c", "conversation": EXPECTED_MESSAGES[0]}])
    assert load_examples(str(chat), "train", columns)[0].messages == EXPECTED_MESSAGES[0]


def test_system_prompt_only_where_the_row_has_none(tmp_path):
    rows = [
        {"id": "plain", "question": "Q", "answer": "A"},
        {"id": "own", "question": "Q", "answer": "A", "system": "Row system."},
        {"id": "chat", "messages": [{"role": "system", "content": "Chat system."}, *EXPECTED_MESSAGES[0]]},
        {"id": "chat-plain", "messages": EXPECTED_MESSAGES[0]},
    ]
    path = write_jsonl(tmp_path / "sys.jsonl", rows)
    systems = {e.id: e.messages[0]["content"] for e in load_examples(str(path), "train", COLUMNS, "Default.")}
    assert systems == {"plain": "Default.", "own": "Row system.", "chat": "Chat system.", "chat-plain": "Default."}
    without = {e.id: e.messages[0]["role"] for e in load_examples(str(path), "train", COLUMNS)}
    assert without == {"plain": "user", "own": "system", "chat": "system", "chat-plain": "user"}


def test_multi_turn_messages(tmp_path):
    turns = [{"role": "system", "content": "S"}, {"role": "user", "content": "u1"},
             {"role": "assistant", "content": "a1"}, {"role": "user", "content": "u2"},
             {"role": "assistant", "content": "a2", "name": "bot"}]
    [example] = load_examples(str(write_jsonl(tmp_path / "mt.jsonl", [{"id": "m", "messages": turns}])),
                              "train", COLUMNS)
    assert example.reference == "a2"
    assert len(example.prompt) == 4
    assert example.messages[-1] == {"role": "assistant", "content": "a2"}  # only role and content are kept


CALL = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
TOOL_TURNS = [{"role": "user", "content": "Weather in Paris?"},
              {"role": "assistant", "content": None, "tool_calls": [CALL]},
              {"role": "tool", "content": '{"c": 21}', "name": "weather", "tool_call_id": "call_1", "extra": 1},
              {"role": "tool", "content": '{"rain": 0}', "name": "weather"},
              {"role": "assistant", "content": "21 C and dry."}]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "saved-dataset"])
def test_tool_call_turns_are_kept_in_shape(tmp_path, fmt):
    # In a table every message gets every key (null where a message lacks it): null weight, tool_calls, name.
    weighted = {"id": "w", "messages": [U, {**A, "weight": 0}, U, A]}
    path = write(tmp_path, fmt, [{"id": "t", "messages": TOOL_TURNS}, MESSAGE_ROWS[0], weighted])
    tools, plain, weighted = load_examples(str(path), "train", COLUMNS)
    assert weighted.untrained == (1,) and weighted.messages == [U, A, U, A]
    assert tools.messages[1] == {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}]}
    assert tools.messages[2] == {"role": "tool", "content": '{"c": 21}', "name": "weather", "tool_call_id": "call_1"}
    assert tools.reference == "21 C and dry."
    assert tools.has_tools and not plain.has_tools
    # The training target may itself be a tool call.
    [call] = load_examples(str(write_jsonl(tmp_path / "call.jsonl", [{"messages": TOOL_TURNS[:2]}])), "train", COLUMNS)
    assert call.messages[-1]["tool_calls"][0]["function"]["name"] == "weather" and call.has_tools


def test_weight_zero_marks_assistant_turns_untrained_and_is_not_handed_on(tmp_path):
    turns = [{"role": "user", "content": "u1", "weight": 0}, {"role": "assistant", "content": "a1", "weight": 0},
             {"role": "user", "content": "u2"}, {"role": "assistant", "content": "a2", "weight": 1}]
    path = write_jsonl(tmp_path / "w.jsonl", [{"id": "w", "messages": turns}, MESSAGE_ROWS[0]])
    weighted, plain = load_examples(str(path), "train", COLUMNS)
    assert weighted.untrained == (1,) and plain.untrained == ()
    assert all(set(m) == {"role", "content"} for m in weighted.messages)
    # Indexes point into the messages handed on: a system prompt put in front shifts them.
    [shifted, _] = load_examples(str(path), "train", COLUMNS, system_prompt="Be brief.")
    assert shifted.untrained == (2,) and shifted.messages[2]["content"] == "a1"


def test_sharegpt_conversations(tmp_path):
    rows = [
        {"id": "s", "conversations": [
            {"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi?"},
            {"from": "gpt", "value": "Hello.", "weight": 0}, {"from": "Human", "value": "Bye?"},
            {"from": "GPT", "value": "Bye."}], "source": "web"},
        {"id": "f", "system": "You call tools.", "conversations": [
            {"from": "user", "value": "Weather in Paris?"},
            {"from": "function_call", "value": '{"name": "weather", "arguments": {"city": "Paris"}}'},
            {"from": "observation", "value": '{"c": 21}'}, {"from": "assistant", "value": "21 C."}]},
    ]
    plain, tools = load_examples(str(write_jsonl(tmp_path / "sharegpt.jsonl", rows)), "train", COLUMNS)
    assert [m["role"] for m in plain.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert plain.messages[2] == {"role": "assistant", "content": "Hello."} and plain.untrained == (2,)
    assert plain.meta == {"source": "web"}
    assert tools.messages[0] == {"role": "system", "content": "You call tools."}
    assert tools.messages[2] == {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}]}
    assert tools.messages[3] == {"role": "tool", "content": '{"c": 21}'} and tools.has_tools
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"conversations": [{"from": "human", "value": "q"},
                                                                   {"from": "bot", "value": "a"}]}])
    assert f"{bad}:1: conversations[1].from: unknown role 'bot'" in error_of(load_examples, str(bad), "train", COLUMNS)


ALPACA = [{"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
          {"instruction": "Name a color.", "input": "", "output": "Blue"}]


def test_alpaca_rows_are_recognised_and_keep_their_input(tmp_path):
    path = write_jsonl(tmp_path / "alpaca.jsonl", ALPACA)
    first, second = load_examples(str(path), "train", COLUMNS)
    assert first.messages == [{"role": "user", "content": "Translate to French.\n\nGood morning"},
                              {"role": "assistant", "content": "Bonjour"}]
    assert second.messages[0] == {"role": "user", "content": "Name a color."}  # an empty input adds nothing
    assert first.meta == {}


def test_question_answer_mapping_appends_the_input_column(tmp_path):
    path = write(tmp_path, "csv", ALPACA)  # a CSV: the empty input is an empty cell
    columns = ColumnMap(question="instruction", answer="output")
    first, second = load_examples(str(path), "train", columns)
    assert first.messages[0]["content"] == "Translate to French.\n\nGood morning"
    assert second.messages[0]["content"] == "Name a color."
    renamed = write_jsonl(tmp_path / "ctx.jsonl", [{"question": "Sum?", "context": "1 and 2", "answer": "3"}])
    [example] = load_examples(str(renamed), "train", ColumnMap(input="context"))
    assert example.messages[0]["content"] == "Sum?\n\n1 and 2" and example.meta == {}


def test_trl_prompt_completion(tmp_path):
    rows = [
        {"id": "c", "prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "u1"},
                               {"role": "assistant", "content": "a1"}, {"role": "user", "content": "u2"}],
         "completion": [{"role": "assistant", "content": "a2"}]},
        {"id": "s", "prompt": "Capital of France?", "completion": "Paris."},
    ]
    chat, plain = load_examples(str(write_jsonl(tmp_path / "pc.jsonl", rows)), "train", COLUMNS)
    assert [m["content"] for m in chat.messages] == ["S", "u1", "a1", "u2", "a2"]
    assert chat.untrained == (2,)  # as in TRL, only the completion is trained
    assert plain.messages == EXPECTED_MESSAGES[0] and plain.untrained == ()
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": [{"role": "user", "content": "u"}],
                                                "completion": [{"role": "user", "content": "u"}]}])
    assert f"{bad}:1: completion[0].role: expected 'assistant'" in error_of(load_examples, str(bad), "train", COLUMNS)


def test_content_as_text_parts_any_case_roles_and_a_blank_system(tmp_path):
    rows = [{"id": "p", "messages": [
        {"role": "System", "content": "  "},
        {"role": "User", "content": [{"type": "text", "text": "Look:"}, {"type": "text", "text": "two parts"}]},
        {"role": "ASSISTANT", "content": [{"type": "text", "text": "Seen."}]}]}]
    [example] = load_examples(str(write_jsonl(tmp_path / "parts.jsonl", rows)), "train", COLUMNS)
    assert example.messages == [{"role": "user", "content": "Look:\ntwo parts"},
                                {"role": "assistant", "content": "Seen."}]
    image = {"id": "i", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is it?"}, {"type": "image_url", "image_url": {"url": "x"}}]}, A]}
    path = write_jsonl(tmp_path / "image.jsonl", [image])
    assert f"{path}:1: messages[0].content[1]: a 'image_url' part is not text" in error_of(
        load_examples, str(path), "train", COLUMNS)


def test_save_to_disk_dataset_dict_split_is_chosen(tmp_path):
    import datasets

    path = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(QA_ROWS),
                          "test": datasets.Dataset.from_list(QA_ROWS[:1])}).save_to_disk(str(path))
    assert [e.id for e in load_examples(str(path), "test", COLUMNS)] == ["q1"]
    message = error_of(load_examples, str(path), "validation", COLUMNS)
    assert f"{path}: has no split 'validation' (it has train, test)" in message
    (tmp_path / "plain").mkdir()
    assert "not one written by datasets' save_to_disk" in error_of(read_rows, str(tmp_path / "plain"))


def test_broken_gzip_names_the_file(tmp_path):
    path = tmp_path / "rows.jsonl.gz"
    path.write_bytes(b"not gzip at all")
    assert f"{path}: cannot decompress as gzip" in error_of(read_rows, str(path))


# --------------------------------------------------------------------------------------------
# Bad rows
# --------------------------------------------------------------------------------------------

U, A = {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}
BAD_ROWS = {
    "missing answer": ({"id": "x", "question": "q"}, "answer", "found columns: id, question"),
    "missing question": ({"id": "x", "answer": "a"}, "question", "missing field"),
    "no known columns": ({"id": "x", "text": "hello"}, "messages", "found columns: id, text"),
    "blank answer": ({"id": "x", "question": "q", "answer": " \n "}, "answer", "whitespace"),
    "null answer": ({"id": "x", "question": "q", "answer": None}, "answer", "got null"),
    "non-string question": ({"id": "x", "question": ["q"], "answer": "a"}, "question", "expected a string"),
    "non-string system": ({"id": "x", "question": "q", "answer": "a", "system": 3}, "system", "expected a string"),
    "empty content": ({"id": "x", "messages": [U, {"role": "assistant", "content": ""}]},
                      "messages[1].content", "empty"),
    "non-string content": ({"id": "x", "messages": [U, {"role": "assistant", "content": 42}]},
                           "messages[1].content", "got int"),
    "missing content": ({"id": "x", "messages": [{"role": "user"}, A]}, "messages[0].content", "missing field"),
    "unknown role": ({"id": "x", "messages": [{"role": "robot", "content": "t"}, A]}, "messages[0].role",
                     "unknown role 'robot'"),
    "role not a string": ({"id": "x", "messages": [{"role": ["user"], "content": "q"}, A]}, "messages[0].role",
                          "unknown role ['user']"),
    "function_call not JSON": ({"id": "x", "conversations": [{"from": "human", "value": "q"},
                                                             {"from": "function_call", "value": "weather(Paris)"}]},
                               "conversations[1].value", "expected the call as JSON text"),
    "tool without a call": ({"id": "x", "messages": [U, A, {"role": "tool", "content": "t"}, A]},
                            "messages[2].role", "expected 'user', got 'tool'"),
    "call without a result": ({"id": "x", "messages": [U, {"role": "assistant", "tool_calls": [
        {"type": "function", "function": {"name": "f", "arguments": "{}"}}]}, U, A]},
        "messages[2].role", "expected 'tool', got 'user'"),
    "call without a name": ({"id": "x", "messages": [U, {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"arguments": {}}}]}, {"role": "tool", "content": "t"}, A]},
        "messages[1].tool_calls[0].function.name", "function's name"),
    "arguments not JSON": ({"id": "x", "messages": [U, {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "f", "arguments": "{oops"}}]}, {"role": "tool", "content": "t"}, A]},
        "messages[1].tool_calls[0].function.arguments", "not parsable"),
    "user makes a call": ({"id": "x", "messages": [{**U, "tool_calls": [CALL]}, A]},
                          "messages[0].tool_calls", "only an assistant"),
    "weight not 0 or 1": ({"id": "x", "messages": [U, {**A, "weight": 0.5}]}, "messages[1].weight",
                          "expected 0 (do not train this turn) or 1, got 0.5"),
    "weight 1 on a user turn": ({"id": "x", "messages": [{**U, "weight": 1}, A]}, "messages[0].weight",
                                "only assistant turns are trained"),
    "user twice": ({"id": "x", "messages": [U, U, A]}, "messages[1].role", "expected 'assistant'"),
    "system not first": ({"id": "x", "messages": [U, {"role": "system", "content": "s"}, A]},
                         "messages[1].role", "got 'system'"),
    "starts with assistant": ({"id": "x", "messages": [A]}, "messages[0].role", "expected 'user'"),
    "ends with user": ({"id": "x", "messages": [U, A, U]}, "messages[2].role", "last message"),
    "system only": ({"id": "x", "messages": [{"role": "system", "content": "s"}]}, "messages", "system message alone"),
    "empty messages": ({"id": "x", "messages": []}, "messages", "empty"),
    "messages not a list": ({"id": "x", "messages": "hello"}, "messages", "list of {role, content}"),
    "message not an object": ({"id": "x", "messages": ["hi", A]}, "messages[0]", "got str"),
    "empty id": ({"id": "", "question": "q", "answer": "a"}, "id", "empty"),
    "id not a string": ({"id": {"a": 1}, "question": "q", "answer": "a"}, "id", "string or an integer"),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_each_kind_of_bad_row_names_file_line_and_field(tmp_path, case):
    row, field, phrase = BAD_ROWS[case]
    path = write_jsonl(tmp_path / "bad.jsonl", [QA_ROWS[0], row])
    message = error_of(load_examples, str(path), "train", COLUMNS)
    assert f"{path}:2: {field}: " in message
    assert phrase in message
    assert "1 bad row" in message


def test_normalize_raises_for_one_row_naming_every_bad_field():
    row = {"id": "x", "messages": [{"role": "user", "content": " "}, {"role": "robot", "content": "a"}]}
    with pytest.raises(DataError) as info:
        normalize("f.jsonl:9", row, COLUMNS)
    assert str(info.value).startswith("f.jsonl:9: messages[0].content: empty")
    assert "messages[1].role: unknown role 'robot'" in str(info.value)
    assert info.value.problems == ("f.jsonl:9: messages[0].content: empty or whitespace-only",
                                   "f.jsonl:9: messages[1].role: unknown role 'robot'; "
                                   "expected one of system, user, assistant, tool")


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "broken.jsonl", [QA_ROWS[0], '{"id": "b", "question": ', "[1, 2]"])
    message = error_of(read_rows, str(path))
    assert f"{path}:2: malformed JSON" in message
    assert f"{path}:3: expected a JSON object" in message


def test_malformed_json_document_names_file_and_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"id": "a", "question": "q", "answer": "a"},\n  {"id": \n]\n', encoding="utf-8")
    assert f"{path}:4: malformed JSON" in error_of(read_rows, str(path))


def test_all_bad_rows_are_collected_in_one_error(tmp_path):
    rows = [QA_ROWS[0]] + [{"id": f"b{i}", "question": "q", "answer": ""} for i in range(24)] + ["{oops"]
    path = write_jsonl(tmp_path / "many.jsonl", rows)
    with pytest.raises(DataError) as info:
        load_examples(str(path), "train", COLUMNS)
    message = str(info.value)
    assert message.startswith(f"{path}: 25 bad row(s)")
    assert len(info.value.problems) == 25
    assert f"{path}:2: answer" in message and f"{path}:21: answer" in message  # the first 20 are listed
    assert f"{path}:22: answer" not in message
    assert "... and 5 more" in message
    assert info.value.problems[-1].startswith(f"{path}:26: malformed JSON")  # same pass, in file order


def test_duplicate_ids_name_both_rows(tmp_path):
    path = write_jsonl(tmp_path / "dup.jsonl", [QA_ROWS[0], QA_ROWS[1], QA_ROWS[0]])
    message = error_of(load_examples, str(path), "train", COLUMNS)
    assert f"{path}:3: id: duplicate id 'q1', also at {path}:1" in message


def test_integer_and_string_ids_that_read_the_same_are_duplicates(tmp_path):
    path = write_jsonl(tmp_path / "dup.jsonl", [{**QA_ROWS[0], "id": 1}, {**QA_ROWS[1], "id": "1"}])
    assert "duplicate id '1'" in error_of(load_examples, str(path), "train", COLUMNS)


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_source_is_an_error(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content, encoding="utf-8")
    assert error_of(load_examples, str(path), "train", COLUMNS) == f"{path}: no rows"


def test_empty_csv_and_json_are_errors(tmp_path):
    for name in ("empty.csv", "empty.json"):
        (tmp_path / name).write_text("", encoding="utf-8")
        assert "no rows" in error_of(load_examples, str(tmp_path / name), "train", COLUMNS)
    (tmp_path / "header.csv").write_text("id,question,answer\n", encoding="utf-8")
    assert "no rows" in error_of(load_examples, str(tmp_path / "header.csv"), "train", COLUMNS)


def test_unknown_extension_lists_supported_ones(tmp_path):
    path = tmp_path / "rows.txt"
    path.write_text("hello\n", encoding="utf-8")
    message = error_of(read_rows, str(path))
    assert str(path) in message and ".txt" in message
    assert all(ext in message for ext in (".jsonl", ".json", ".csv", ".parquet"))


def test_missing_file_with_a_data_extension_is_not_looked_up_on_the_hub(tmp_path):
    message = error_of(read_rows, str(tmp_path / "nope.jsonl"))
    assert "nope.jsonl" in message and "file not found" in message


def test_hub_id_that_cannot_load_offline_is_a_data_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    if "datasets" in sys.modules:
        # datasets reads the variable once, at import: if another test imported it first, it would
        # otherwise retry the network for half a minute before failing.
        monkeypatch.setattr(sys.modules["datasets"].config, "HF_HUB_OFFLINE", True)
    message = error_of(read_rows, "no-such-org/no-such-dataset", "validation")
    assert "no-such-org/no-such-dataset" in message
    assert "validation" in message and "offline" in message


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


def numbered(tmp_path: Path, n: int, name: str = "all", start: int = 0) -> Path:
    rows = [{"id": f"r{i:02d}", "question": f"q{i}", "answer": f"a{i}"} for i in range(start, start + n)]
    return write_jsonl(tmp_path / f"{name}.jsonl", rows)


@pytest.mark.parametrize("test_size, expected", [(0.25, 5), (0.1, 2), (0.01, 1), (3, 3), (3.0, 3), (19, 19)])
def test_seeded_split_sizes(tmp_path, test_size, expected):
    params = DataParams(train=str(numbered(tmp_path, 20)), test=None, test_size=test_size)
    train, test = load_splits(params, seed=1)
    assert (len(train), len(test)) == (20 - expected, expected)
    assert sorted(e.id for e in train + test) == [f"r{i:02d}" for i in range(20)]
    assert not {e.id for e in train} & {e.id for e in test}


def test_seeded_split_is_deterministic(tmp_path):
    params = DataParams(train=str(numbered(tmp_path, 40)), test=None, test_size=0.25)
    ids = lambda split: ([e.id for e in split[0]], [e.id for e in split[1]])  # noqa: E731
    first = ids(load_splits(params, seed=7))
    assert ids(load_splits(params, seed=7)) == first
    assert ids(load_splits(params, seed=8)) != first
    assert first[1] == sorted(first[1])  # each side keeps the file's order


@pytest.mark.parametrize("test_size", [20, 25, 0.99, 2.5])
def test_split_that_leaves_a_side_empty_or_is_not_a_count_is_an_error(tmp_path, test_size):
    params = DataParams(train=str(numbered(tmp_path, 20)), test=None, test_size=test_size)
    message = error_of(load_splits, params, seed=0)
    assert "all.jsonl" in message and "test_size" in message


def test_single_row_cannot_be_split(tmp_path):
    params = DataParams(train=str(numbered(tmp_path, 1)), test=None, test_size=0.5)
    assert "at least one row" in error_of(load_splits, params, seed=0)


def test_separate_test_file(tmp_path):
    params = DataParams(train=str(numbered(tmp_path, 5, "tr")), test=str(numbered(tmp_path, 3, "te", start=5)))
    train, test = load_splits(params, seed=0)
    assert [e.id for e in test] == ["r05", "r06", "r07"] and len(train) == 5


def test_prompts_shared_by_train_and_test_are_an_error(tmp_path):
    params = DataParams(train=str(numbered(tmp_path, 5, "tr")), test=str(numbered(tmp_path, 3, "te", start=3)))
    message = error_of(load_splits, params, seed=0)
    assert "2 test row(s) have the prompt of 2 training row(s)" in message
    assert f"'r03' ({tmp_path}/te.jsonl:1) = 'r03' ({tmp_path}/tr.jsonl:4)" in message
    assert "data.overlap: drop" in message


def test_the_same_prompt_under_another_id_is_caught(tmp_path):
    train = write_jsonl(tmp_path / "tr.jsonl", [{"id": "a", "question": "Capital of  France?", "answer": "Paris."},
                                                {"id": "b", "question": "1+1?", "answer": "2"}])
    test = write_jsonl(tmp_path / "te.jsonl", [{"id": "z", "question": "Capital of France?\n", "answer": "Paris"}])
    message = error_of(load_splits, DataParams(train=str(train), test=str(test)), seed=0)
    assert "'z'" in message and "'a'" in message and "1 test row(s)" in message
    other_system = write_jsonl(tmp_path / "sys.jsonl", [{"id": "z", "question": "Capital of France?",
                                                         "answer": "Paris", "system": "Answer in French."}])
    assert load_splits(DataParams(train=str(train), test=str(other_system)), seed=0)  # another prompt


def test_id_less_files_sharing_a_name_get_distinct_ids(tmp_path):
    for folder, start in (("a", 0), ("b", 10)):
        (tmp_path / folder).mkdir()
        write_jsonl(tmp_path / folder / "data.jsonl",
                    [{"question": f"q{i}", "answer": "a"} for i in range(start, start + 3)])
    train, test = load_splits(DataParams(train=str(tmp_path / "a/data.jsonl"), test=str(tmp_path / "b/data.jsonl")), 0)
    assert len(train) == len(test) == 3
    assert not {e.id for e in train} & {e.id for e in test}
    assert all(e.id.startswith("data-") for e in train + test)


def test_id_less_train_and_test_files_get_distinct_ids(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"question": f"q{i}", "answer": "a"} for i in range(2)])
    write_jsonl(tmp_path / "test.jsonl", [{"question": f"t{i}", "answer": "a"} for i in range(2)])
    train, test = load_splits(DataParams(train=str(tmp_path / "train.jsonl"), test=str(tmp_path / "test.jsonl")), 0)
    assert [e.id[:5] for e in test] == ["test-", "test-"] and len({e.id for e in train + test}) == 4


def test_made_up_ids_follow_the_path_from_the_project_root(tmp_path, monkeypatch):
    rows = [{"question": "q", "answer": "a"}]
    for root in ("one", "two"):
        (tmp_path / root / "data").mkdir(parents=True)
        write_jsonl(tmp_path / root / "data" / "x.jsonl", rows)
    ids = []
    for root in ("one", "two"):
        monkeypatch.setenv("SFTLAB_ROOT", str(tmp_path / root))
        ids.append(load_examples(str(tmp_path / root / "data" / "x.jsonl"), "train", COLUMNS)[0].id)
    assert ids[0] == ids[1]  # a moved checkout keeps its ids


def test_overlap_drop_removes_the_training_rows_and_says_so(tmp_path):
    params = DataParams(train=str(numbered(tmp_path, 30, "tr")), test=str(numbered(tmp_path, 25, "te", start=5)),
                        overlap="drop")
    said: list[str] = []
    train, test = load_splits(params, seed=0, echo=said.append)
    assert [e.id for e in train] == ["r00", "r01", "r02", "r03", "r04"] and len(test) == 25
    [line] = said
    assert line.startswith("data.overlap: drop: removed 25 training row(s)") and "and 5 more" in line
    splits = data.load_data(params, seed=0)
    assert splits.dropped == 25 and len(splits.overlap) == 25
    assert [(r["rows"], r["in_train"], r["in_test"], r["dropped"]) for r in splits.report()] == [
        (30, 5, 0, 25), (25, 0, 25, 0)]
    params.overlap = "error"
    message = error_of(load_splits, params, seed=0)
    assert "25 test row(s) have the prompt of 25 training row(s)" in message and "and 5 more" in message


# --------------------------------------------------------------------------------------------
# Mixtures
# --------------------------------------------------------------------------------------------


def test_mixture_takes_each_source_by_weight(tmp_path):
    big, small = numbered(tmp_path, 20, "big"), numbered(tmp_path, 10, "small", start=20)
    test = numbered(tmp_path, 4, "te", start=40)
    params = DataParams(train=[{"source": str(big), "weight": 0.5}, {"source": str(small)}], test=str(test))
    splits = data.load_data(params, seed=3)
    assert [(r["source"], r["weight"], r["rows"], r["taken"], r["in_train"]) for r in splits.report()] == [
        (str(big), 0.5, 20, 10, 10), (str(small), 1.0, 10, 10, 10), (str(test), 1.0, 4, 4, 0)]
    taken = [e.id for e in splits.train]
    assert taken[10:] == [f"r{i}" for i in range(20, 30)] and taken[:10] == sorted(taken[:10])
    assert [e.id for e in data.load_data(params, seed=3).train] == taken  # seeded
    assert [e.id for e in data.load_data(params, seed=4).train] != taken
    assert data.summarize(splits.train)["by_source"] == {str(big): 10, str(small): 10}


def test_mixture_split_per_source_and_seeded_test_split(tmp_path):
    import datasets

    folder = tmp_path / "saved"
    datasets.DatasetDict({"train_sft": datasets.Dataset.from_list(ALPACA)}).save_to_disk(str(folder))
    params = DataParams(train=[{"source": str(folder), "split": "train_sft"}, {"source": str(numbered(tmp_path, 6))}],
                        test=None, test_size=2)
    train, test = load_splits(params, seed=0)
    assert len(train) == 6 and len(test) == 2


def test_mixture_errors_name_every_bad_source(tmp_path):
    good = numbered(tmp_path, 10, "good")
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"question": "q"}])
    params = DataParams(train=[{"source": str(good)}, {"source": str(bad)}, {"source": str(tmp_path / "gone.jsonl")}],
                        test=None)
    message = error_of(load_splits, params, seed=0)
    assert message.startswith("2 of the 3 training sources cannot be used")
    assert f"{bad}:1: answer: missing field" in message and "gone.jsonl: file not found" in message
    params = DataParams(train=[{"source": str(good), "weight": 0.05}, {"source": str(good)}], test=None)
    assert f"{good}: weight 0.05 of its 10 rows takes none" in error_of(load_splits, params, seed=0)


def test_mixture_sources_must_not_share_ids(tmp_path):
    sources = [{"source": str(numbered(tmp_path, 3, name))} for name in ("x", "y")]
    params = DataParams(train=sources, test=None)
    message = error_of(load_splits, params, seed=0)
    assert "share 3 id(s)" in message and f"{tmp_path}/y.jsonl:1: id: duplicate id 'r00', also at" in message


@pytest.mark.parametrize("train, phrase", [
    ([], "an empty mixture"),
    ([{"source": "a.jsonl", "weight": 0}], "[0].weight: Input should be greater than 0"),
    ([{"source": "a.jsonl"}, {"source": "b.jsonl", "weight": 1.5}], "[1].weight: Input should be less than or equal to 1"),
    ([{"source": "a.jsonl", "fraction": 0.5}], "[0].fraction: unknown key; a source has source, split, weight"),
    ([{"id": "org/set", "weight": 0.5}], "[0].id: unknown key (the dataset is `source`)"),
    ({"datasets": [{"id": "org/set"}]}, "[{source: <id>, split, weight}, ...]"),
    (["a.jsonl"], "[0]: expected a mapping"),
])
def test_mixture_params_are_checked_one_line_per_problem(train, phrase):
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as info:
        DataParams(train=train)
    assert phrase in str(info.value)
    assert "string" not in str(info.value)  # not also "expected a string" from the one-source form


# --------------------------------------------------------------------------------------------
# Records and summary
# --------------------------------------------------------------------------------------------


def test_to_records_is_json_safe(tmp_path):
    frame = pd.DataFrame({"id": ["a", "b"], "question": ["q", "q2"], "answer": ["x", "y"],
                          "score": [1.5, float("nan")], "when": pd.to_datetime(["2024-01-02", "2024-03-04"]),
                          "tags": [["t1"], []]})
    frame.to_parquet(tmp_path / "meta.parquet")
    examples = load_examples(str(tmp_path / "meta.parquet"), "train", COLUMNS)
    records = data.to_records(examples)
    json.dumps(records, allow_nan=False)
    assert records[0] == {"id": "a", "messages": [{"role": "user", "content": "q"},
                                                  {"role": "assistant", "content": "x"}],
                          "score": 1.5, "when": "2024-01-02T00:00:00", "tags": ["t1"]}
    assert records[1]["score"] is None
    records[0]["messages"][0]["content"] = "changed"
    assert examples[0].messages[0]["content"] == "q"  # records are copies


def test_summarize(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", QA_ROWS + [{"id": "q3", "question": "abc", "answer": "abcd"}])
    summary = data.summarize(load_examples(str(path), "train", COLUMNS))
    assert summary["rows"] == 3
    assert summary["by_lang"] == {"en": 1, "ko": 1, "(none)": 1}
    assert summary["mean_prompt_chars"] == round((18 + 4 + 3) / 3, 1)
    assert summary["mean_reference_chars"] == round((6 + 5 + 4) / 3, 1)
    assert data.summarize([]) == {"rows": 0, "mean_prompt_chars": 0.0, "mean_reference_chars": 0.0}


def test_summarize_counts_turns_untrained_turns_and_tool_rows(tmp_path):
    weighted = {"id": "w", "messages": [U, {**A, "weight": 0}, U, A]}
    silent = {"id": "s", "messages": [U, {**A, "weight": 0}]}
    path = write_jsonl(tmp_path / "t.jsonl", [{"id": "t", "messages": TOOL_TURNS}, weighted, silent, MESSAGE_ROWS[0]])
    summary = data.summarize(load_examples(str(path), "train", COLUMNS))
    assert (summary["assistant_turns"], summary["untrained_turns"], summary["rows_with_tools"]) == (6, 2, 1)
    assert summary["rows_all_untrained"] == 1
    assert "by_source" not in summary  # one source


def test_example_is_frozen():
    example = Example(id="a", messages=EXPECTED_MESSAGES[0], source="f.jsonl:1", meta={})
    with pytest.raises(AttributeError):
        example.id = "b"  # type: ignore[misc]


# --------------------------------------------------------------------------------------------
# The demo data shipped with the project
# --------------------------------------------------------------------------------------------


def test_demo_data_loads():
    root = paths.project_root()
    if not ((root / "data/demo/train.jsonl").exists() and (root / "data/demo/test.jsonl").exists()):
        pytest.skip("data/demo/train.jsonl and test.jsonl are not there yet")
    train, test = load_splits(DataParams(), seed=0)
    assert train and test
    assert all(e.messages[-1]["role"] == "assistant" for e in train + test)
    assert {"lang", "category"} <= set(train[0].meta)
