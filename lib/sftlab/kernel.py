"""This checkout's Jupyter kernel, and the checks that a run never crosses into another checkout.

    python -m sftlab.kernel install    register this environment's kernel for the user (run by `make setup`;
                                       a no-op when it is already registered)
    python -m sftlab.kernel name       print its name

Why: the package finds its project root from where it was installed (`paths.PACKAGE_ROOT`), so a kernel
running another checkout's interpreter executes that checkout's code and writes into its `outputs/`.
A kernel shared by every checkout (one fixed name, re-pointed by whichever `make setup` ran last) does
exactly that. Each environment therefore gets a kernel of its own:

    name          sftlab-<checkout folder>-<first 8 hex of sha1(realpath(sys.prefix))>
    display name  Python (sftlab: <checkout path>)

`name()` computes it; the Makefile, the runner and `sftlab notebook` all ask it.

`ensure(kernel)` (the runner, before any stage) registers this environment's kernel in the user's
kernel folder if it is missing, then starts the kernel's interpreter once to ask which environment it
is and where it imports `sftlab` from. It raises `KernelError` when the kernel is not registered, when
its interpreter does not start, is another environment (e.g. `--kernel` or `SFTLAB_KERNEL` naming
another checkout's kernel), or imports `sftlab` from another folder; the message names both sides.

`check_checkout()` is the same check from inside a kernel (a notebook's validation cell): it raises
`KernelError` when `sftlab` is imported from another folder than `$SFTLAB_EXPECT_PACKAGE` (exported by
the runner), or, in a notebook opened by hand, than the checkout that holds the working directory.

The kernel named `sftlab` that earlier set-ups registered for every checkout is never used by default;
`install()` removes it when it points at this environment.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import sftlab
from sftlab import paths
from sftlab.errors import SftlabError

EXPECT_PACKAGE_ENV = "SFTLAB_EXPECT_PACKAGE"  # the runner's sftlab package folder, exported to the kernel
LEGACY_NAME = "sftlab"  # the kernel earlier set-ups shared between checkouts
_PYTHON_ALIASES = {"python", f"python{sys.version_info[0]}", "python%i.%i" % sys.version_info[:2]}
# Asked of a kernel's interpreter: which environment it is, and where it would import sftlab from.
_PROBE = ("import importlib.util, json, os, sys; s = importlib.util.find_spec('sftlab'); "
          "print(json.dumps({'executable': sys.executable, 'prefix': os.path.realpath(sys.prefix), "
          "'package': s and s.origin and os.path.dirname(os.path.realpath(s.origin))}))")


class KernelError(SftlabError, RuntimeError):
    """A kernel that would run another environment's or another checkout's code, or none at all."""


def package_dir() -> Path:
    """The folder this process imports `sftlab` from (`<checkout>/lib/sftlab` for an editable install)."""
    return Path(sftlab.__file__).resolve().parent


def name() -> str:
    """This environment's kernel name: the checkout folder's name, for people, and a hash of the
    interpreter's environment, so that two checkouts (or two venvs of one) never share a kernel."""
    folder = re.sub(r"[^a-z0-9._-]+", "-", paths.PACKAGE_ROOT.name.lower()).strip("-.") or "checkout"
    digest = hashlib.sha1(os.path.realpath(sys.prefix).encode()).hexdigest()[:8]
    return f"sftlab-{folder}-{digest}"


def display_name() -> str:
    return f"Python (sftlab: {paths.PACKAGE_ROOT})"


def kernelspec_metadata() -> dict:
    """What a notebook's `metadata.kernelspec` says to open it on this environment's kernel."""
    return {"name": name(), "display_name": display_name(), "language": "python"}


def _user_kernel_json(kernel: str) -> Path:
    from jupyter_client.kernelspec import KernelSpecManager

    return Path(KernelSpecManager().user_kernel_dir) / kernel / "kernel.json"


def _argv0(kernel_json: Path) -> str | None:
    try:
        return json.loads(kernel_json.read_text(encoding="utf-8"))["argv"][0]
    except (OSError, ValueError, KeyError, IndexError):
        return None


def install() -> tuple[str, bool]:
    """Register this environment's kernel in the user's kernel folder unless it already points at this
    interpreter; return (name, whether it was written). Also removes the old shared `sftlab` kernel when
    it points at this interpreter (one pointing elsewhere belongs to another checkout and is left alone)."""
    kernel = name()
    kernel_json = _user_kernel_json(kernel)
    legacy = _user_kernel_json(LEGACY_NAME)
    if _argv0(legacy) == sys.executable:
        shutil.rmtree(legacy.parent)
    if _argv0(kernel_json) == sys.executable:
        return kernel, False
    from ipykernel.kernelspec import install as install_kernelspec

    try:
        install_kernelspec(user=True, kernel_name=kernel, display_name=display_name())
    except OSError as e:
        raise KernelError(f"Could not register the Jupyter kernel '{kernel}' in {kernel_json.parent}: {e}. Make that "
                          f"folder writable, or set JUPYTER_DATA_DIR to a writable folder, and run `make setup`.") from None
    return kernel, True


def ensure(kernel: str | None = None) -> str:
    """Check that `kernel` (default: this environment's) runs this interpreter's environment and imports
    this `sftlab`; register this environment's kernel first if it is missing. Return the kernel's name.
    Starts the kernel's interpreter once (a fraction of a second)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    own = name()
    kernel = kernel or own
    if kernel == own:
        install()
    try:
        spec = KernelSpecManager().get_kernel_spec(kernel)
    except NoSuchKernel:
        raise KernelError(
            f"Jupyter kernel '{kernel}' is not registered (`jupyter kernelspec list` shows those that are). "
            f"Leave out --kernel and SFTLAB_KERNEL to use this checkout's own kernel '{own}' (registered by "
            f"`make setup`, or now by the runner itself)."
        ) from None
    found = _probe(kernel, spec.argv, spec.env or {})
    here = os.path.realpath(sys.prefix)
    if found["prefix"] != here:
        raise KernelError(
            f"Jupyter kernel '{kernel}' runs the interpreter {found['executable']} (environment {found['prefix']}), "
            f"but this sftlab runs from {sys.executable} (environment {here}). Its notebooks would execute "
            f"another environment's code and, for another checkout, write into that checkout's outputs. "
            f"Leave out --kernel and SFTLAB_KERNEL to use this checkout's kernel '{own}', or run that "
            f"checkout's own command: {Path(found['prefix']) / 'bin' / 'sftlab'}"
        )
    expected = str(package_dir())
    if found["package"] != expected:
        raise KernelError(
            f"Jupyter kernel '{kernel}' imports sftlab from {found['package'] or 'nowhere (not installed)'}, "
            f"but this sftlab is {expected}: the notebooks would run other code than this checkout's. Look for "
            f"PYTHONPATH or another install of sftlab in {here}; `make setup` installs this checkout's."
        )
    return kernel


def _probe(kernel: str, argv: list[str], env: dict) -> dict:
    """Start the kernel's interpreter as the kernel would be started, but on _PROBE instead of ipykernel."""
    for i in range(len(argv) - 1):
        if argv[i] == "-m" and argv[i + 1] in ("ipykernel_launcher", "ipykernel"):
            command = [*argv[:i], "-c", _PROBE]
            break
    else:
        raise KernelError(f"Jupyter kernel '{kernel}' does not start an IPython kernel (argv: {argv}); "
                          f"sftlab runs its notebooks on a Python kernel of its own environment '{name()}'.")
    if command[0] in _PYTHON_ALIASES:
        command[0] = sys.executable  # what jupyter_client does with a bare `python`
    try:
        result = subprocess.run(command, env={**os.environ, **env}, cwd=paths.project_root(),
                                capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise KernelError(f"Jupyter kernel '{kernel}': its interpreter {command[0]} does not start ({e}). "
                          f"Run `make setup` in this checkout (it registers the kernel '{name()}').") from None
    if result.returncode != 0:
        raise KernelError(f"Jupyter kernel '{kernel}': its interpreter {command[0]} failed to start: "
                          f"{result.stderr.strip()[-500:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _checkout_of(folder: Path) -> Path | None:
    """The sftlab checkout that holds `folder`, if any."""
    for candidate in (folder, *folder.parents):
        if (candidate / "lib" / "sftlab" / "__init__.py").is_file() and (candidate / "pyproject.toml").is_file():
            return candidate
    return None


def check_checkout() -> Path:
    """In a kernel: raise `KernelError` if `sftlab` is imported from another folder than expected; return
    the folder it is imported from. Expected: `$SFTLAB_EXPECT_PACKAGE` (set by the runner for its kernels);
    without it (a notebook opened by hand, whose kernel starts in the notebook's folder), the checkout that
    holds the working directory, unless SFTLAB_ROOT names the root explicitly. Nothing is checked when the
    working directory or the imported package is outside any checkout."""
    here = package_dir()
    expected = os.environ.get(EXPECT_PACKAGE_ENV)
    if expected:
        if Path(expected).resolve() != here:
            raise KernelError(
                f"This kernel ({sys.executable}) imports sftlab from {here}, but the runner that started it is "
                f"{expected}: the notebook would run another checkout's code and write into its outputs. "
                f"Run the checkout's own command (<checkout>/.venv/bin/sftlab), whose kernel is its own."
            )
        return here
    checkout, imported = _checkout_of(Path.cwd().resolve()), _checkout_of(here)
    if checkout and imported and checkout != imported and "SFTLAB_ROOT" not in os.environ:
        raise KernelError(
            f"This notebook is in the checkout {checkout}, but its kernel ({sys.executable}) imports sftlab from "
            f"{here}: it would run that other checkout's code and write into its outputs. Choose the kernel "
            f"'Python (sftlab: {checkout})', or write a copy with `{checkout}/.venv/bin/sftlab notebook`."
        )
    return here


def main(argv: list[str] | None = None) -> int:
    command = (argv if argv is not None else sys.argv[1:]) or ["install"]
    if command == ["name"]:
        print(name())
    elif command == ["install"]:
        kernel, written = install()
        print(f"Jupyter kernel '{kernel}' ({display_name()}): {'registered' if written else 'up to date'}")
    else:
        print("usage: python -m sftlab.kernel [install | name]", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
