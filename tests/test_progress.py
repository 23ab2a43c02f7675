"""Terminal progress (sftlab.progress): text lines with counts, rate and ETA under the runner, a heartbeat
while nothing moves, the tqdm bar elsewhere; and the runner's `still running` line for a quiet stage."""

import logging
import re
import time

from sftlab import progress, runner

LINE = re.compile(r"^infer checkpoint-60: (\d+)/64 samples \((\d+)%\), ([\d.]+) samples/s, (\d+)s elapsed, ETA (\d+)s$")


def test_text_lines_have_counts_rate_and_eta():
    lines: list[str] = []
    bar = progress.TextProgress(64, "infer checkpoint-60", unit="sample", initial=8, every_s=0, echo=lines.append)
    time.sleep(0.05)
    bar.update(16)
    bar.update(16)
    bar.close()
    bar.close()  # once only
    assert lines[0] == "infer checkpoint-60: 8/64 samples (12%), 0s elapsed, ETA unknown"  # rows already on disk
    counts = [LINE.match(line).group(1) for line in lines[1:3]]
    assert counts == ["24", "40"]
    assert re.fullmatch(r"infer checkpoint-60: 40/64 samples \(62%\), [\d.]+ samples/s, stopped after \d+s", lines[3])
    assert len(lines) == 4


def test_lines_are_spaced_and_a_heartbeat_covers_a_slow_step():
    lines: list[str] = []
    with progress.TextProgress(10, "judge", unit="row", every_s=1.0, echo=lines.append) as bar:
        for _ in range(5):
            bar.update(1)  # quick updates: no line each
        assert len(lines) == 1
        time.sleep(2.5)  # one slow batch: the heartbeat speaks
        assert 2 <= len(lines) <= 3
        assert all(line.startswith("judge: 5/10 rows (50%), ") and "ETA" in line for line in lines[1:])
        bar.update(5)
    assert re.fullmatch(r"judge: 10/10 rows \(100%\), [\d.]+ rows/s, done in \d+s", lines[-1])
    count = len(lines)
    time.sleep(1.5)
    assert len(lines) == count  # nothing after the last line


def test_step_announces_itself_and_keeps_saying_it_in_text_mode(monkeypatch):
    monkeypatch.setenv(progress.PROGRESS_ENV, "text")
    lines: list[str] = []
    with progress.step("train: label audit", every_s=1.0, echo=lines.append):
        time.sleep(2.3)
    assert lines[0] == "[sftlab] train: label audit"
    assert lines[1] == "[sftlab] train: label audit: still running, 1s"
    assert lines[-1] == "[sftlab] train: label audit: done in 2s"


def test_text_under_the_runner_the_bar_elsewhere(monkeypatch, tmp_path):
    monkeypatch.delenv(progress.PROGRESS_ENV, raising=False)
    monkeypatch.delenv("SFTLAB_RUN", raising=False)
    assert not progress.text_mode()
    bar = progress.bar(3, "x", disable=True)
    assert type(bar).__name__ != "TextProgress"
    monkeypatch.setenv("SFTLAB_RUN", str(tmp_path))
    assert progress.text_mode()
    assert isinstance(progress.bar(3, "x", disable=True), progress.TextProgress)
    monkeypatch.setenv(progress.PROGRESS_ENV, "bar")
    assert not progress.text_mode()


def test_the_runner_says_a_quiet_stage_is_still_running(caplog):
    caplog.set_level(logging.INFO)
    papermill_log = logging.getLogger("papermill")
    with runner._QuietWatch("[demo] infer", quiet_s=1.0):
        papermill_log.info("Executing Cell 6---------------------------------------")
        time.sleep(2.5)
    quiet = [r.getMessage() for r in caplog.records if "still running" in r.getMessage()]
    assert quiet and quiet[0].startswith("[demo] infer: still running cell 6, 1 s without output")
    assert len(quiet) <= 2
    assert not any(isinstance(h, runner._QuietWatch) for h in papermill_log.handlers)
