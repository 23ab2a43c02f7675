"""The one row store (sftlab.jsonl): append + fsync, one rule for a torn last line, one error for a bad
middle line, and rows that survive any character — through the infer -> judge -> score chain too."""

from __future__ import annotations

import json

import pytest

from sftlab import jsonl

TRICKY = {
    "line separators": "a\u2028b\u2029c\u0085d",
    "newlines and returns": "one\ntwo\r\nthree\rfour",
    "nul and controls": "x\x00y\x1b[31mz\x7f",
    "lone surrogates": "left \ud800 right \udfff",
    "korean and emoji": "서울은 한국의 수도입니다 🙂",
}


def test_any_character_round_trips(tmp_path):
    path = tmp_path / "rows.jsonl"
    rows = [{"id": name, "output": text} for name, text in TRICKY.items()]
    jsonl.append_rows(path, rows[:2])
    with jsonl.Appender() as out:
        for row in rows[2:]:
            out.append(path, row)
    assert jsonl.read_rows(path) == rows
    assert path.read_bytes().count(b"\n") == len(rows)  # one physical line per row
    assert "서울은".encode() in path.read_bytes()  # readable text, not \\u escapes, where UTF-8 allows


def test_a_torn_last_line_is_not_read_and_is_cut_before_the_next_append(tmp_path):
    path = tmp_path / "rows.jsonl"
    jsonl.append_rows(path, [{"id": "a"}, {"id": "b"}])
    with open(path, "ab") as f:
        f.write(b'{"id": "c", "outp')  # a kill in the middle of a write
    assert [r["id"] for r in jsonl.read_rows(path)] == ["a", "b"]
    assert path.read_bytes().endswith(b'"outp')  # readers never change the file
    jsonl.append_rows(path, [{"id": "c"}])
    assert [json.loads(line)["id"] for line in path.read_text(encoding="utf-8").split("\n")[:-1]] == ["a", "b", "c"]


def test_a_bad_middle_line_is_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"id": "a"}\n{"id": \n{"id": "c"}\n', encoding="utf-8")
    with pytest.raises(jsonl.RowsError, match=rf"{path}:2: not a JSON row"):
        jsonl.read_rows(path)
    path.write_text('{"id": "a"}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(jsonl.RowsError, match=rf"{path}:2: .*expected an object, got list"):
        jsonl.read_rows(path)
    path.write_bytes(b'{"id": "a"}\n{"id": "\xff"}\n')
    with pytest.raises(jsonl.RowsError, match=rf"{path}:2: not a JSON row \(not UTF-8\)"):
        jsonl.read_rows(path)


def test_a_missing_file_has_no_rows(tmp_path):
    assert jsonl.read_rows(tmp_path / "nothing.jsonl") == []
    assert not jsonl.cut_torn_tail(tmp_path / "nothing.jsonl")


@pytest.mark.parametrize("backend", ["reference", "openai"])
def test_tricky_outputs_pass_from_infer_rows_through_judge_and_score(backend, tmp_path, outputs, monkeypatch):
    """Generation rows holding every tricky string are judged and scored, and keep their text — offline, and
    over HTTP (tests/judge_server.py), where a lone surrogate reaches the judge as U+FFFD."""
    import contextlib

    from judge_server import FakeJudgeServer
    from sftlab import config

    server = FakeJudgeServer() if backend == "openai" else contextlib.nullcontext()
    with server:
        settings = {"backend": "reference"}
        if backend == "openai":
            monkeypatch.setenv("SFTLAB_TEST_JUDGE_KEY", "sk-test")
            settings = {"backend": "openai", "base_url": server.base_url, "api_key_env": "SFTLAB_TEST_JUDGE_KEY",
                        "max_retries": 0}
        _judge_and_score_tricky(config.validate({"experiment": "tricky", "judge": settings}))
        if backend == "openai":
            shown = json.dumps([r["messages"] for r in server.requests], ensure_ascii=False)
            assert "left \ufffd right \ufffd" in shown and "a\u2028b\u2029c\u0085d" in shown


def _judge_and_score_tricky(experiment) -> None:
    from sftlab import judge, score
    from sftlab.infer import GenerationRow
    from sftlab.metrics import METRICS

    rows = [GenerationRow(id=name, checkpoint="base", prompt=[{"role": "user", "content": "질문 " + text}],
                          reference="답", output=text, n_tokens=3, finish_reason="eos", eos_terminated=True,
                          meta={"lang": "ko"}, **{m: 0.0 for m in METRICS}).to_json()
            for name, text in TRICKY.items()]
    jsonl.append_rows(experiment.layout.generations_file("base"), rows)
    summary = judge.run(judge.plan(experiment), progress=False)
    assert summary.judged == len(TRICKY) and summary.errors == 0
    samples = score.run(score.plan(experiment)).tables["samples"]
    shown = {name: jsonl.utf8_safe(text) for name, text in TRICKY.items()}  # frames hold valid UTF-8 only
    assert dict(zip(samples["id"], samples["output"])) == shown
    assert shown["lone surrogates"] == "left \ufffd right \ufffd"
    frame = judge.load_judgments(experiment)
    assert len(frame) == len(TRICKY) and (frame["status"] == "judged").all()
    assert (samples["judge_status"] == "judged").all()
