"""A trainer never outlives the runner that started it, and never shares an experiment with another:
a SIGKILL of the runner's process group stops every training process, a second trainer is refused with
the holder's name, and a lock left by a killed trainer is taken over."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT

from sftlab import data, train
from sftlab.config import load_params
from sftlab.train import lock as train_lock

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def processes_with(marker: str) -> list[str]:
    """Live processes other than this one whose command line or environment holds `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue  # a zombie runs nothing
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if marker.encode() in cmdline or marker.encode() in environ:
            found.append(f"{entry.name}: {' '.join(a.decode(errors='replace') for a in cmdline.split(bytes(1)))[:200]}")
    return found


@linux_only
@pytest.mark.slow
def test_killing_the_runners_process_group_stops_the_training_and_a_second_trainer_is_refused(
        tmp_path, outputs, tiny_model_path):
    # Silent after its first step: no print of the trainer's can fail on the dead kernel's pipe and stop it
    # by accident, as a long run with a large logging_steps would not be stopped.
    overrides = [f"model.name_or_path={tiny_model_path}", "train.max_steps=100000", "train.save_steps=5",
                 "train.logging_steps=100000", "experiment=long"]
    command = [sys.executable, "-m", "sftlab", "run", "params/demo.yaml", "--stages", "train"]
    for override in overrides:
        command += ["--set", override]
    log = outputs / "long" / "train" / "train.log"
    with open(tmp_path / "runner.log", "w") as out:
        # The runner in a process group of its own, as a shell job is; its kernel and torchrun are not in it.
        runner = subprocess.Popen(command, cwd=ROOT, env={**os.environ}, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        deadline = time.time() + 300
        while not (log.exists() and "[sftlab] step" in log.read_text(encoding="utf-8")):
            assert runner.poll() is None, (tmp_path / "runner.log").read_text()[-3000:]
            assert time.time() < deadline, "training did not start"
            time.sleep(0.5)

        # A second trainer of the same experiment is refused, and told who holds it.
        params = load_params(ROOT / "params" / "demo.yaml", overrides)
        examples, _ = data.load_splits(params.data, params.seed)
        with pytest.raises(train_lock.TrainLocked) as refused:
            train.preflight(train.plan(params, examples, str(tiny_model_path)), label_audit=False)
        message = str(refused.value)
        holder = json.loads(params.layout.train_lock().read_text())
        assert f"pid {holder['pid']} on host {socket.gethostname()} since {holder['started']}" in message
        assert "sftlab run params/demo.yaml --stages train" in message and f"kill {runner.pid}" in message

        os.killpg(runner.pid, signal.SIGKILL)  # what closing the terminal or a scheduler's kill does
        runner.wait()
        deadline = time.time() + 10
        while (alive := processes_with(str(outputs))) and time.time() < deadline:
            time.sleep(0.5)
        assert not alive, f"still running 10 s after the kill: {alive}"
        trained = sorted(p.name for p in params.layout.train.glob("checkpoint-*"))
        time.sleep(2)
        assert sorted(p.name for p in params.layout.train.glob("checkpoint-*")) == trained  # nothing writes on
    finally:
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
            runner.wait()

    # The killed run's lock names a process that is gone: the next run takes it over and says so.
    said = []
    planned = train.plan(params, examples, str(tiny_model_path))
    train.preflight(planned, echo=said.append, label_audit=False)
    assert said == [f"[sftlab] taking over a stale train lock: {train_lock.describe(holder)}; that process no "
                    f"longer holds it ({params.layout.train_lock()})"]
    train.release(planned)
    assert not params.layout.train_lock().exists()


def acquire_elsewhere(path: Path, experiment: Path) -> subprocess.CompletedProcess:
    """Try the lock from another process."""
    code = ("import sys; from pathlib import Path; from sftlab.train import lock\n"
            "try:\n    lock.acquire(Path(sys.argv[1]), Path(sys.argv[2]))\n"
            "except lock.TrainLocked as e:\n    print(e); sys.exit(3)\n")
    return subprocess.run([sys.executable, "-c", code, str(path), str(experiment)], capture_output=True, text=True,
                          timeout=60)


def test_stale_locks_are_taken_over_and_live_ones_refused(tmp_path):
    experiment = tmp_path / "exp"
    path = experiment / "train.lock"
    gone = subprocess.Popen(["true"])
    gone.wait()
    experiment.mkdir()
    path.write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname(), "started": "2026-01-01 10:00:00 UTC",
                                "command": "sftlab run params/demo.yaml", "experiment": str(experiment)}))
    said = []
    lock = train_lock.acquire(path, experiment, said.append)
    assert said == [f"[sftlab] taking over a stale train lock: pid {gone.pid} on host {socket.gethostname()} since "
                    f"2026-01-01 10:00:00 UTC (sftlab run params/demo.yaml); that process no longer holds it ({path})"]
    assert train_lock.acquire(path, experiment) is lock  # planning twice in one process is not a second trainer
    refused = acquire_elsewhere(path, experiment)
    assert refused.returncode == 3, refused.stderr
    assert f"is being trained by pid {os.getpid()} on host {socket.gethostname()}" in refused.stdout
    lock.release()
    assert not path.exists() and acquire_elsewhere(path, experiment).returncode == 0

    # Another host's lock (a shared filesystem) cannot be checked by pid: its heartbeat decides.
    path.write_text(json.dumps({"pid": 4242, "host": "node-b", "started": "2026-01-01 10:00:00 UTC",
                                "command": "sftlab run params/demo.yaml", "experiment": str(experiment)}))
    with pytest.raises(train_lock.TrainLocked, match=r"pid 4242 on host node-b .* heartbeat is \d+ s old"):
        train_lock.acquire(path, experiment)
    old = time.time() - 2 * train_lock.STALE_S
    os.utime(path, (old, old))
    said = []
    train_lock.acquire(path, experiment, said.append).release()
    assert "pid 4242 on host node-b" in said[0] and "no heartbeat for" in said[0]

    # A lock copied along with the experiment (cp -r while it trained) names the original folder.
    path.write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "experiment": "/elsewhere/exp"}))
    said = []
    train_lock.acquire(path, experiment, said.append).release()
    assert "it was copied from /elsewhere/exp" in said[0]
