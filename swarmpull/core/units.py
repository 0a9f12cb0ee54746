"""Human units for sizes and rates: ``20GB``, ``4MiB``, ``50MB/s``, ``400Mbit/s``."""

from __future__ import annotations

import re

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_BIT_UNITS = {"bit": 1, "kbit": 1000, "mbit": 1000**2, "gbit": 1000**3}
_NUMBER = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*\Z")


def parse_size(text: str) -> int:
    """Bytes in ``text``: decimal (``20GB`` = 20e9) or binary (``4MiB``) units."""
    match = _NUMBER.match(text)
    unit = match.group(2).lower() if match else None
    if not match or unit not in _SIZE_UNITS:
        raise ValueError(f"not a size: {text!r} (examples: 512KiB, 4MiB, 20GB)")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def parse_rate(text: str) -> int:
    """Bytes per second in ``text``: ``50MB/s``, ``4MiB/s``, ``400Mbit/s``, ``1Gbit``."""
    body = text.strip()
    if body.lower().endswith("/s"):
        body = body[:-2]
    match = _NUMBER.match(body)
    if match:
        unit = match.group(2).lower()
        number = float(match.group(1))
        if unit in _BIT_UNITS:
            return int(number * _BIT_UNITS[unit] / 8)
        if unit in _SIZE_UNITS and unit:
            return int(number * _SIZE_UNITS[unit])
    raise ValueError(f"not a rate: {text!r} (examples: 50MB/s, 400Mbit/s)")


def format_size(size: float) -> str:
    """``size`` bytes in binary units, for humans: ``3.2 MiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
