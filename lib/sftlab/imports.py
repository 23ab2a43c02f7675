"""Import-time costs that sftlab's own processes (the CLI, a cluster job) do without."""

from __future__ import annotations

import sys

# Optional modules that a library imports when they are installed, for a feature no sftlab process uses.
UNUSED = (
    # jsonschema, which nbformat validates every notebook with, imports rfc3987_syntax (installed for Jupyter's
    # event schemas) to check the "iri" string format, and rfc3987_syntax builds a Lark grammar on import:
    # about 1.2 s in every process that reads or writes a notebook. No notebook schema uses that format.
    "rfc3987_syntax",
)


def skip_unused() -> list[str]:
    """Make the modules of `UNUSED` unimportable in this process, so that the libraries that import them when
    they can go without them (jsonschema then does not check "iri" strings). Call it before anything imports
    them; return the names it applied to (none when one was imported already: a no-op then)."""
    skipped = []
    for name in UNUSED:
        if name not in sys.modules:
            sys.modules[name] = None  # `import name` now raises ImportError, which the importers catch
            skipped.append(name)
    return skipped
