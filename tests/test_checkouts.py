"""Two checkouts on one machine never cross: each runs on its own kernel and writes only into its own outputs.

Two copies of this checkout (its tracked and untracked, not ignored files), A and B, each get a real
`make setup` with HOME in a temporary folder (the user's own kernels are not touched), B's last. Each
copy's .venv is seeded with hard links to this test's environment, minus this checkout's editable
install of sftlab, so `make setup` runs pip (finding the pinned packages there), installs the copy
itself and registers its kernel in seconds instead of minutes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
import yaml

from sftlab import kernel

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@dataclass
class Checkout:
    root: Path
    env: dict

    @property
    def python(self) -> Path:
        return self.root / ".venv" / "bin" / "python"

    def sftlab(self, *args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.root / ".venv" / "bin" / "sftlab"), *args], cwd=cwd or self.root,
                              env=env or self.env, capture_output=True, text=True, timeout=600)

    def python_says(self, code: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.python), "-c", code], cwd=cwd or self.root, env={**self.env, **env},
                              capture_output=True, text=True, timeout=120)

    def kernel_name(self) -> str:
        result = self.python_says("from sftlab import kernel; print(kernel.name())")
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def outputs(self) -> list[str]:
        return sorted(p.name for p in (self.root / "outputs").iterdir() if p.name != ".gitkeep")


def copy_checkout(target: Path) -> None:
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                            capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():  # a tracked file deleted in the working tree is listed but absent
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def is_this_checkouts_install(entry: Path) -> bool:
    """This environment's editable install of sftlab, which would make the copy import our sftlab."""
    name = entry.name
    if name.startswith("__editable__") and "sftlab" in name:
        return True
    if name.startswith("sftlab") and name.endswith((".dist-info", ".egg-link", ".egg-info")):
        return True
    return name.endswith(".pth") and str(ROOT) in entry.read_text(encoding="utf-8", errors="replace")


def link_copy(source: Path, target: Path) -> None:
    """`source`'s contents into the folder `target` as hard links (no data copied), or as symbolic links
    where the two are on different file systems."""
    same_device = os.stat(source).st_dev == os.stat(target).st_dev
    subprocess.run(["cp", "-al" if same_device else "-as", f"{source}/.", str(target)], check=True)


def seed_venv(checkout: Path) -> None:
    venv = checkout / ".venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(sysconfig.get_paths()["purelib"])
    copy_site = venv / site.relative_to(sys.prefix)
    link_copy(site, copy_site)
    for entry in copy_site.iterdir():
        if is_this_checkouts_install(entry):
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    for data in ("share", "etc"):  # Jupyter's data files: nbconvert's HTML templates, kernel resources
        if (Path(sys.prefix) / data).is_dir():
            (venv / data).mkdir(exist_ok=True)
            link_copy(Path(sys.prefix) / data, venv / data)


def make_setup(checkout: Checkout) -> subprocess.CompletedProcess:
    result = subprocess.run(["make", "setup"], cwd=checkout.root, env=checkout.env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def checkouts(tmp_path_factory) -> tuple[Checkout, Checkout]:
    base = tmp_path_factory.mktemp("checkouts")
    home = base / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SFTLAB_", "JUPYTER_", "MAKE", "PYTEST_")) and k not in ("VIRTUAL_ENV", "PYTHONPATH",
                                                                                         "MFLAGS")}
    env["HOME"] = str(home)
    a, b = Checkout(base / "A", env), Checkout(base / "B", env)
    for checkout in (a, b):  # B's set-up last: under a kernel shared by name, B's would win
        copy_checkout(checkout.root)
        seed_venv(checkout.root)
        found = checkout.python_says("import importlib.util; print(importlib.util.find_spec('sftlab'))")
        assert found.stdout.strip() == "None", found.stdout  # the seed left this checkout's sftlab out
        make_setup(checkout)
    return a, b


def test_each_checkout_imports_its_own_code_and_has_its_own_kernel(checkouts):
    a, b = checkouts
    for checkout in (a, b):
        found = checkout.python_says("import sftlab; print(sftlab.__file__)", cwd=checkout.root.parent)
        assert found.stdout.strip() == str(checkout.root / "lib" / "sftlab" / "__init__.py"), found.stderr
    assert a.kernel_name() != b.kernel_name()
    kernels = Path(a.env["HOME"]) / ".local" / "share" / "jupyter" / "kernels"
    for checkout in (a, b):
        spec = json.loads((kernels / checkout.kernel_name() / "kernel.json").read_text())
        assert spec["argv"][0] == str(checkout.python)
        assert spec["display_name"] == f"Python (sftlab: {checkout.root})"


def test_a_second_setup_is_quick_and_changes_nothing(checkouts):
    a, _ = checkouts
    started = time.monotonic()
    result = make_setup(a)
    assert time.monotonic() - started < 20
    assert "pip install" not in result.stdout and "up to date" in result.stdout


def test_a_run_in_one_checkout_runs_its_code_and_writes_only_its_outputs(checkouts, tiny_model_path):
    a, b = checkouts
    # What an earlier set-up of B left behind: the kernel that every checkout used to share, pointing at B.
    legacy = Path(a.env["HOME"]) / ".local" / "share" / "jupyter" / "kernels" / kernel.LEGACY_NAME
    legacy.mkdir(parents=True)
    (legacy / "kernel.json").write_text(json.dumps({
        "argv": [str(b.python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python (sftlab)", "language": "python"}))
    params = a.root / "crossing.yaml"
    params.write_text(yaml.safe_dump({
        "experiment": "crossing", "seed": 0, "model": {"name_or_path": str(tiny_model_path)},
        "data": {"train": "data/demo/train.jsonl", "test": "data/demo/test.jsonl"},  # from the project root
        "train": {"max_steps": 1, "per_device_train_batch_size": 4, "logging_steps": 1, "save_steps": 1,
                  "max_length": 160, "gradient_checkpointing": False, "audit_rows": 2},
    }), encoding="utf-8")

    result = a.sftlab("run", str(params), "--stages", "train")

    assert result.returncode == 0, result.stderr[-3000:]
    assert b.outputs() == [] and not (ROOT / "outputs" / "crossing").exists()
    exp = a.root / "outputs" / "crossing"
    status = json.loads((exp / "status.json").read_text())["stages"]["train"]
    assert status["status"] == "done"
    record = exp / status["run"]
    assert json.loads((record / "run.json").read_text())["kernel"] == a.kernel_name()
    executed = nbformat.read(record / "train.ipynb", as_version=4)
    text = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert str(b.root) not in text
    # The train stage launches torchrun with the kernel's own interpreter (sys.executable) and logs the command.
    assert f" {a.python} -m torch.distributed.run " in (exp / "train" / "train.log").read_text(encoding="utf-8")
    assert (exp / "train" / "checkpoint-1").is_dir() and (exp / "reports" / "train.html").exists()


def test_a_kernel_of_another_checkout_is_refused(checkouts):
    a, b = checkouts
    for forced in (["--kernel", b.kernel_name()], []):
        env = {**a.env} if forced else {**a.env, "SFTLAB_KERNEL": b.kernel_name()}
        result = a.sftlab("run", "params/demo.yaml", "--stages", "train", "--set", "experiment=refused", *forced,
                          env=env)
        assert result.returncode == 1, result.stderr[-3000:]
        message = result.stderr
        assert f"Jupyter kernel '{b.kernel_name()}' runs the interpreter {b.python}" in message
        assert f"but this sftlab runs from {a.python}" in message and "Traceback" not in message
        assert f"this checkout's kernel '{a.kernel_name()}'" in message  # how to fix it
    assert "refused" not in a.outputs() and b.outputs() == []


def test_inside_a_kernel_sftlab_from_another_checkout_is_refused(checkouts):
    a, b = checkouts
    check = "from sftlab import kernel; print(kernel.check_checkout())"
    # As the runner starts a kernel: it exports its own package folder.
    crossed = a.python_says(check, SFTLAB_EXPECT_PACKAGE=str(b.root / "lib" / "sftlab"))
    assert crossed.returncode != 0 and "KernelError" in crossed.stderr
    assert f"imports sftlab from {a.root / 'lib' / 'sftlab'}" in crossed.stderr
    assert f"the runner that started it is {b.root / 'lib' / 'sftlab'}" in crossed.stderr
    same = a.python_says(check, SFTLAB_EXPECT_PACKAGE=str(a.root / "lib" / "sftlab"))
    assert same.returncode == 0 and same.stdout.strip() == str(a.root / "lib" / "sftlab")
    # As Jupyter starts a kernel for a notebook opened by hand: in the notebook's folder.
    by_hand = a.python_says(check, cwd=b.root / "notebooks")
    assert by_hand.returncode != 0 and f"This notebook is in the checkout {b.root}" in by_hand.stderr
    assert a.python_says(check, cwd=a.root / "notebooks").returncode == 0
