"""The import graph of lib/sftlab has no cycle, counting imports inside functions too (a cycle hidden behind an
import in a function is still a cycle), and no module imports another's private name."""

import ast
from pathlib import Path

LIB = Path(__file__).resolve().parents[1] / "lib"


def modules() -> dict[str, Path]:
    found = {}
    for path in (LIB / "sftlab").rglob("*.py"):
        parts = list(path.relative_to(LIB).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> list[tuple[str, list[str]]]:
    """(imported module, names taken from it) for every import in the file, at any depth."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1] + [node.module or ""]) if node.level else node.module
            base = base.rstrip(".")
            for alias in node.names:  # `from sftlab import train` imports the module sftlab.train
                found += [(f"{base}.{alias.name}", [])] if f"{base}.{alias.name}" in known else [(base, [alias.name])]
    return [(target, names) for target, names in found if target in known and target != name]


def test_no_import_cycle_at_any_depth():
    known = modules()
    edges = {name: {target for target, _ in imports(name, path, known)
                    # a package's __init__ re-exporting its own submodules is how a package is built
                    if not (path.name == "__init__.py" and target.startswith(name + "."))
                    and not (known[target].name == "__init__.py" and name.startswith(target + "."))}
             for name, path in known.items()}
    cycles, state = [], {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for target in sorted(edges[name]):
            if state.get(target) == "open":
                cycles.append(trail[trail.index(target):] + [target])
            elif target not in state:
                visit(target, trail + [target])
        state[name] = "done"

    for name in sorted(known):
        if name not in state:
            visit(name, [name])
    assert len(known) > 50 and sum(map(len, edges.values())) > 100  # the graph was read
    assert cycles == []


def test_no_module_imports_a_private_name_of_another():
    known = modules()
    private = [(name, target, n) for name, path in known.items() for target, names in imports(name, path, known)
               for n in names if n.startswith("_")]
    # Left to the bootstrap's own clean-up (one public bootstrap module): labels uses the reliability card's.
    assert {(name, target) for name, target, _ in private} <= {("sftlab.labels", "sftlab.score.reliability")}
