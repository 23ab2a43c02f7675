"""A one-node Slurm cluster on this machine, for the executor's tests and bench/cluster.py.

    python tests/slurm_cluster.py start FOLDER    # prints `export SLURM_CONF=FOLDER/slurm.conf`
    python tests/slurm_cluster.py stop FOLDER

Debian's packages (`apt-get install slurm-wlm munge`, what .ci/run installs) run as root: a munged of its own
(its own socket and key under FOLDER, so a system munged is left alone), slurmctld and slurmd, with a
slurm.conf for this host written from `slurmd -C` (this machine's CPUs and memory) and ports of their own.
Clients find it through SLURM_CONF, which jobs inherit. `LocalSlurm.start` raises `SlurmUnavailable` with the
reason when the packages are missing, the user is not root or a daemon does not come up.

The settings that differ from a cluster's and why: no accounting database (job states come from squeue while
slurmctld keeps ended jobs, MinJobAge one day); proctrack/linuxproc and task/none (no cgroups in a
container); KillWait 5 s (a cancelled job's processes get SIGKILL 5 s after SIGTERM, not 30 s).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")


class SlurmUnavailable(RuntimeError):
    """No local Slurm can run here; the message says why."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalSlurm:
    def __init__(self, folder: Path):
        self.folder = Path(folder).resolve()
        self.conf = self.folder / "slurm.conf"
        self.munge_socket = self.folder / "munge" / "munge.socket"

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def start(self, timeout_s: float = 60) -> "LocalSlurm":
        missing = [d for d in DAEMONS if not shutil.which(d)] + [c for c in ("sbatch", "squeue", "scontrol")
                                                                  if not shutil.which(c)]
        if missing:
            raise SlurmUnavailable(f"not installed: {', '.join(missing)} (apt-get install slurm-wlm munge)")
        if os.geteuid() != 0:
            raise SlurmUnavailable("the local Slurm runs its daemons as root; this user is not root")
        self.folder.mkdir(parents=True, exist_ok=True)
        self._start_munge()
        self._write_conf()
        for daemon, log in (("slurmctld", "slurmctld.log"), ("slurmd", "slurmd.log")):
            command = [daemon, "-f", str(self.conf)] + (["-N", self.node] if daemon == "slurmd" else [])
            result = subprocess.run(command, capture_output=True, text=True, env=self._daemon_env())
            if result.returncode != 0:
                self.stop()
                raise SlurmUnavailable(f"{daemon} did not start: {result.stderr.strip()}\n{self._tail(log)}")
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            state = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True,
                                   env={**os.environ, **self.env}).stdout.strip()
            if state in ("idle", "mixed", "allocated"):
                return self
            time.sleep(0.5)
        self.stop()
        raise SlurmUnavailable(f"the node did not come up in {timeout_s:.0f} s (state {state!r}):\n"
                               f"{self._tail('slurmctld.log')}\n{self._tail('slurmd.log')}")

    def stop(self) -> None:
        """Cancel every job and wait for it to end (slurmd leaves a running job's processes behind), then stop
        the daemons, slurmd first, and kill whatever process still runs with this cluster's SLURM_CONF."""
        env = {**os.environ, **self.env}
        if (self.folder / "slurmctld.pid").exists():
            subprocess.run(["scancel", "--full", "--user", str(os.getuid())], env=env, capture_output=True)
            deadline = time.time() + 30
            while time.time() < deadline:
                live = subprocess.run(["squeue", "-h", "-o", "%i"], env=env, capture_output=True, text=True)
                if live.returncode != 0 or not live.stdout.strip():
                    break
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            pid_file = self.folder / f"{name}.pid"
            try:
                pid = int(pid_file.read_text().strip())
            except (OSError, ValueError):
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            for _ in range(100):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)
        for pid in self.job_processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def job_processes(self) -> list[int]:
        """The processes (other than this one) whose environment names this cluster's slurm.conf: its jobs'."""
        marker = f"SLURM_CONF={self.conf}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0") and int(entry.name) != os.getppid():
                    found.append(int(entry.name))
            except OSError:
                continue
        return found

    def _daemon_env(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    def _tail(self, name: str, lines: int = 20) -> str:
        path = self.folder / name
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def _start_munge(self) -> None:
        folder = self.munge_socket.parent
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        key = folder / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(128))
            os.chmod(key, 0o600)
        result = subprocess.run(["munged", "--force", f"--socket={self.munge_socket}", f"--key-file={key}",
                                 f"--pid-file={self.folder / 'munged.pid'}", f"--log-file={folder / 'munged.log'}",
                                 f"--seed-file={folder / 'munged.seed'}"], capture_output=True, text=True)
        if result.returncode != 0:
            raise SlurmUnavailable(f"munged did not start: {result.stderr.strip()}")

    def _write_conf(self) -> None:
        hardware = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
        node_line = next(line for line in hardware.splitlines() if line.startswith("NodeName="))
        self.node = node_line.split()[0].split("=", 1)[1]
        f = self.folder
        for sub in ("state", "spool"):
            (f / sub).mkdir(exist_ok=True)
        self.conf.write_text(f"""\
ClusterName=sftlab-test
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={self.munge_socket},cred_expire=10
CredType=cred/munge
StateSaveLocation={f / 'state'}
SlurmdSpoolDir={f / 'spool'}
SlurmctldPidFile={f / 'slurmctld.pid'}
SlurmdPidFile={f / 'slurmd.pid'}
SlurmctldLogFile={f / 'slurmctld.log'}
SlurmdLogFile={f / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
ReturnToService=2
MinJobAge=86400
KillWait=5
InactiveLimit=0
{node_line} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print(__doc__, file=sys.stderr)
        return 2
    cluster = LocalSlurm(Path(argv[1]))
    if argv[0] == "start":
        cluster.start()
        print(f"export SLURM_CONF={cluster.conf}")
    else:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
