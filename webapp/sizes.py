"""Byte counts as people read them, in the binary units the README uses ("2 GiB")."""

from __future__ import annotations

UNITS = ("KiB", "MiB", "GiB", "TiB")


def human_size(n: int | float) -> str:
    """"2 GiB", "1.5 MiB", "468 KiB", "467 bytes": one decimal from MiB up (none when it is
    0), whole KiB, and bytes as they are below 1 KiB."""
    value = float(n)
    if value < 1024:
        return f"{int(value):,} bytes" if value != 1 else "1 byte"
    for unit in UNITS:
        value /= 1024
        if round(value, 0 if unit == "KiB" else 1) < 1024 or unit == UNITS[-1]:
            break
    if unit == "KiB":
        return f"{value:.0f} KiB"
    said = f"{value:.1f}"
    return f"{said.removesuffix('.0')} {unit}"
