"""Moments as text: one UTC ISO-8601 form everywhere hostctl records a time."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def utc_iso(ts: float | None = None, digits: int = 3) -> str:
    """``ts`` (default: now) as ``2026-12-05T09:14:44.123Z``, with ``digits`` (0, 3 or 6)
    decimals of the second: tasks record milliseconds, contexts whole seconds."""
    moment = datetime.fromtimestamp(time.time() if ts is None else ts, UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if digits:
        text += "." + f"{moment.microsecond:06d}"[:digits]
    return text + "Z"


def parse_iso(text: str) -> float:
    """The epoch seconds of a :func:`utc_iso` text with decimals."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
