"""Where things live: the project root, the outputs folder, one experiment's folders.

Relative paths in a params file (data files, rubrics, `base:`) are written as seen from the
project root, because that is where `sftlab run` starts the notebook kernels. A notebook opened
by hand in `notebooks/` has another working directory, so `resolve` falls back to the root.

Environment:
    SFTLAB_ROOT     the project root (default: the checkout this package was installed from)
    SFTLAB_OUTPUTS  the outputs folder (default: <root>/outputs)
"""

from __future__ import annotations

import os
from pathlib import Path

# lib/sftlab/paths.py -> parents[2] is the checkout (the package is installed editable).
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def project_root() -> Path:
    return Path(os.environ.get("SFTLAB_ROOT", _PACKAGE_ROOT)).resolve()


def outputs_root() -> Path:
    return Path(os.environ.get("SFTLAB_OUTPUTS", project_root() / "outputs")).resolve()


def notebooks_dir() -> Path:
    return project_root() / "notebooks"


def experiment_dir(experiment: str) -> Path:
    return outputs_root() / experiment


def resolve(path: str | os.PathLike) -> Path:
    """An existing path as given (absolute or from the working directory), else from the root."""
    path = Path(path).expanduser()
    if path.is_absolute() or path.exists():
        return path.resolve()
    return (project_root() / path).resolve()
