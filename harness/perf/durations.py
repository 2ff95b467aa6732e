"""Durations written the way people write them: 90, 90s, 10m, 2h, 1h30m."""

from __future__ import annotations

import re

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


def parse_duration(text: str) -> float:
    """Seconds in `text`; raises ValueError naming the text when it is not a duration."""
    value = text.strip().lower()
    try:
        return float(value)
    except ValueError:
        pass
    parts = _PART.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise ValueError(f"duration {text!r} is not valid: use seconds or e.g. 90s, 10m, 2h, 1h30m")
    return sum(float(number) * _UNITS[unit] for number, unit in parts)
