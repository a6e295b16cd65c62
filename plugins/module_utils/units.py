# Copyright: (c) 2026, GPU Lab Fleet maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Human sizes ("10G", "500GiB", "2T", "none") to bytes, and back to the forms backends want.

One parser for every module and the user model, so that "10G" in the inventory and 10737418240
read back from a backend compare equal and a second run never re-sets a size.
Suffixes are binary (K = KiB = 1024), as ZFS and LXD interpret them; "KB"/"MB"/... are decimal
(10**3, 10**6, ...), matching LXD's reading.
"""

from __future__ import annotations

import re

_BINARY = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50, "e": 1 << 60}
_DECIMAL = {"kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "pb": 10**15, "eb": 10**18}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
NONE_WORDS = frozenset({"none", "0"})


class SizeError(ValueError):
    """A size that cannot be parsed; the message names the value."""


def parse_size(value: str | int | float | None, *, allow_none: bool = False) -> int | None:
    """Return the size in bytes. 'none' (and None) give None when allow_none, else an error.

    Accepts ints (bytes), '1024', '10G', '10GiB', '10g', '1.5T', '500MB' (decimal), '0'.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
        if allow_none:
            return None
        raise SizeError(f"size {value!r}: 'none' is not allowed here")
    if isinstance(value, bool):
        raise SizeError(f"invalid size {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise SizeError(f"invalid size {value!r}: negative")
        return value
    if isinstance(value, float):
        if value < 0 or value != int(value):
            raise SizeError(f"invalid size {value!r}: not a whole number of bytes")
        return int(value)
    m = _SIZE_RE.match(str(value))
    if not m:
        raise SizeError(f"invalid size {value!r}: expected a number with an optional unit such as 10G, 500GiB, 2T")
    number, unit = m.group(1), m.group(2).lower()
    if unit.endswith("ib"):
        unit = unit[:-2]
    if unit in _BINARY:
        factor = _BINARY[unit]
    elif unit in _DECIMAL:
        factor = _DECIMAL[unit]
    else:
        raise SizeError(f"invalid size {value!r}: unknown unit {m.group(2)!r}")
    size = float(number) * factor
    if size != int(size):
        raise SizeError(f"invalid size {value!r}: not a whole number of bytes")
    return int(size)


def format_binary(size: int) -> str:
    """Shortest exact binary form: 10737418240 -> '10GiB', 1536 -> '1536B' is avoided -> '1536'."""
    for suffix, factor in (
        ("EiB", 1 << 60),
        ("PiB", 1 << 50),
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ):
        if size and size % factor == 0:
            return f"{size // factor}{suffix}"
    return str(size)
