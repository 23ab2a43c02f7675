"""Times as sftlab writes them: UTC always, so that runs recorded on machines in different time zones sort
and compare.

    utc_now()             '2026-12-03T14:05:09+00:00'   rows, records, probes, locks
    utc_iso(timestamp)    the same, of a time.time() value
    utc_stamp(timestamp)  '20261203T140509Z'            in folder names (runs/<stamp>-<stage>)
"""

from __future__ import annotations

import time
from datetime import datetime, timezone


def utc_iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")


def utc_now() -> str:
    return utc_iso(time.time())


def utc_stamp(timestamp: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if timestamp is None else timestamp, timezone.utc).strftime(
        "%Y%m%dT%H%M%SZ")
