"""Training-data fidelity, as a user meets it: for each data format and each copied trainer key, what
happens (accepted with its rows and supervised tokens, or refused with its first error line) and how
many seconds the command took to say so. Prints JSON.

    .venv/bin/python bench/fidelity.py [--model builtin:smollm2-135m-instruct]

Each case is a params file in a scratch folder run through the real command line: `sftlab resolve`
(params-time checks) or `sftlab prepare-train` (rows read, every row tokenized and masked, label audit).
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONVERSATION = [{"role": "user", "content": "What is the capital of France?"},
                {"role": "assistant", "content": "Paris."},
                {"role": "user", "content": "And of Germany?"},
                {"role": "assistant", "content": "Berlin."},
                {"role": "user", "content": "And of Italy?"},
                {"role": "assistant", "content": "Rome."}]


def rows(n, make):
    return [make(i) for i in range(n)]


def formats(folder: Path) -> dict[str, object]:
    """name -> a data.train value (a file written here, or a mixture list)."""
    def jsonl(name, records, opener=open):
        path = folder / name
        with opener(path, "wt", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        return str(path)

    sharegpt = rows(12, lambda i: {"conversations": [{"from": "human", "value": f"Question {i}?"},
                                                    {"from": "gpt", "value": f"Answer {i}."}]})
    alpaca = rows(12, lambda i: {"instruction": f"Translate {i}", "input": f"text {i}", "output": f"Text {i}."})
    prompt_completion = rows(12, lambda i: {"prompt": [{"role": "user", "content": f"Q{i}?"}],
                                            "completion": [{"role": "assistant", "content": f"A{i}."}]})
    parts = rows(12, lambda i: {"messages": [{"role": "User", "content": [{"type": "text", "text": f"Q{i}?"}]},
                                             {"role": "ASSISTANT", "content": f"A{i}."}]})
    blank_system = rows(12, lambda i: {"messages": [{"role": "system", "content": ""},
                                                    {"role": "user", "content": f"Q{i}?"},
                                                    {"role": "assistant", "content": f"A{i}."}]})
    weight0 = rows(12, lambda i: {"messages": [dict(m, weight=0) if j == 1 else m
                                               for j, m in enumerate(CONVERSATION)], "id": f"w{i}"})
    multi = rows(12, lambda i: {"messages": CONVERSATION, "id": f"m{i}"})
    import datasets

    saved = folder / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(multi)}).save_to_disk(str(saved))
    return {
        "sharegpt": jsonl("sharegpt.jsonl", sharegpt),
        "alpaca": jsonl("alpaca.jsonl", alpaca),
        "trl_prompt_completion": jsonl("pc.jsonl", prompt_completion),
        "content_parts_capitalised_roles": jsonl("parts.jsonl", parts),
        "blank_system": jsonl("blank.jsonl", blank_system),
        "weight_0": jsonl("weight0.jsonl", weight0),
        "multi_turn": jsonl("multi.jsonl", multi),
        "jsonl_gz": jsonl("multi2.jsonl.gz", rows(12, lambda i: {"messages": CONVERSATION, "id": f"g{i}"}), gzip.open),
        "save_to_disk": str(saved),
        "mixture": [{"source": jsonl("mix-a.jsonl", sharegpt), "weight": 0.5},
                    {"source": jsonl("mix-b.jsonl", alpaca), "weight": 1.0}],
    }


def run(command: list[str]) -> dict:
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    seconds = round(time.monotonic() - started, 2)
    errors = [line.strip() for line in done.stderr.splitlines()
              if line.strip() and ("error" in line.lower() or line.startswith("  ")) and "Warning" not in line]
    return {"exit": done.returncode, "seconds": seconds, "first_error": errors[0][:300] if done.returncode else None,
            "stderr_tail": done.stderr.strip().splitlines()[-1][:300] if done.stderr.strip() else ""}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="builtin:smollm2-135m-instruct")
    args = parser.parse_args()
    sftlab = str(Path(sys.executable).parent / "sftlab")
    results: dict[str, dict] = {"formats": {}, "keys": {}}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        test = folder / "test.jsonl"
        test.write_text(json.dumps({"id": "t1", "question": "Held-out question?", "answer": "Held out."}) + "\n")

        def params_file(name: str, train_value, **train) -> Path:
            params = {"experiment": f"fidelity-{name}", "model": {"name_or_path": args.model},
                      "data": {"train": train_value, "test": str(test)},
                      "train": {"max_steps": 1, "max_length": 256, "audit_rows": 2, **train}}
            path = folder / f"{name}.yaml"
            path.write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
            return path

        env_outputs = folder / "outputs"
        import os

        os.environ["SFTLAB_OUTPUTS"] = str(env_outputs)
        os.environ.setdefault("SFTLAB_MODEL_CACHE", str(ROOT / "outputs" / "models"))  # converted once, reused
        for name, value in formats(folder).items():
            result = run([sftlab, "prepare-train", str(params_file(name, value))])
            report = env_outputs / f"fidelity-{name}" / "train" / "data_report.json"
            if report.exists():
                data = json.loads(report.read_text(encoding="utf-8"))
                result.update(rows_read=data["rows"], rows_trained=data["rows_trained"],
                              supervised_tokens=data["supervised_tokens"], tokens=data["tokens"],
                              trained_per_answer=[t["trained"] for t in data["by_turn"]],
                              weight0_per_answer=[t["untrained_weight0"] for t in data["by_turn"]])
            results["formats"][name] = result
        multi = formats(folder)["multi_turn"]
        last = run([sftlab, "prepare-train", str(params_file("multi_turn_last", multi, turns="last"))])
        report = env_outputs / "fidelity-multi_turn_last" / "train" / "data_report.json"
        if report.exists():
            data = json.loads(report.read_text(encoding="utf-8"))
            last.update(supervised_tokens=data["supervised_tokens"], tokens=data["tokens"])
        results["formats"]["multi_turn_turns_last"] = last
        tools = folder / "tools.jsonl"
        tools.write_text(json.dumps({"messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "w", "arguments": {}}}]},
            {"role": "tool", "content": "sunny"}, {"role": "assistant", "content": "Sunny."}]}) + "\n")
        results["formats"]["tool_calls_without_tool_template"] = run(
            [sftlab, "prepare-train", str(params_file("tools", str(tools)))])
        long = folder / "long.jsonl"
        long.write_text("".join(json.dumps({"id": f"l{i}", "question": "word " * (300 if i < 3 else 5),
                                            "answer": "Yes."}) + "\n" for i in range(10)))
        for policy in ("error", "drop", "keep_end"):
            result = run([sftlab, "prepare-train", str(params_file(f"overlong-{policy}", str(long), overlong=policy))])
            report = env_outputs / f"fidelity-overlong-{policy}" / "train" / "data_report.json"
            if report.exists():
                data = json.loads(report.read_text(encoding="utf-8"))
                result.update(rows_read=data["rows"], rows_trained=data["rows_trained"],
                              dropped=data["rows_dropped"], truncated=data["rows_truncated"])
            results["formats"][f"overlong_{policy}"] = result
        demo = str(ROOT / "data" / "demo" / "train.jsonl")
        for key, value in [("output_dir", "elsewhere"), ("push_to_hub", True), ("hub_model_id", "me/model"),
                           ("seed", 7), ("completion_only_loss", False), ("assistant_only_loss", True),
                           ("gradient_checkpointing_kwargs", {"use_reentrant": True}), ("max_seq_length", 512),
                           ("warmup_ratio", 0.1), ("report_to", "wandb"), ("chat_template_path", "t.jinja")]:
            results["keys"][key] = run([sftlab, "resolve", str(params_file(f"key-{key}", demo, **{key: value}))])
        recipe = ROOT / "tests" / "fixtures" / "recipe-zephyr-7b-beta-sft-full.yaml"
        result = run([sftlab, "import-recipe", str(recipe), "-o", str(folder / "params" / "zephyr.yaml")])
        result["remaining_problems"] = [line.strip() for line in subprocess.run(
            [sftlab, "resolve", str(folder / "params" / "zephyr.yaml")], capture_output=True, text=True,
            cwd=ROOT).stderr.splitlines() if line.startswith("  ")]
        results["import_recipe"] = result
    print(json.dumps(results, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
