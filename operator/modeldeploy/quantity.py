"""Parse Kubernetes quantities, so "0.5" and "500m" (server-normalised) compare equal."""

from __future__ import annotations

import re
from decimal import Decimal

_SUFFIX = {
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
    "k": Decimal(10) ** 3, "M": Decimal(10) ** 6, "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12, "P": Decimal(10) ** 15, "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10, "Mi": Decimal(2) ** 20, "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40, "Pi": Decimal(2) ** 50, "Ei": Decimal(2) ** 60,
}
_RE = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]?)$")


def parse(value: object) -> Decimal | None:
    """The quantity's value, or None when `value` is not a quantity."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return None
    m = _RE.match(str(value))
    if not m:
        return None
    try:
        number = Decimal(m.group(1))
        # Real quantities are small; a hex digest like "8e1234567" is not one.
        if abs(number.adjusted()) > 30:
            return None
        return number * _SUFFIX[m.group(2)]
    except ArithmeticError:  # InvalidOperation, Overflow
        return None


def binary(n_bytes: float) -> str:
    """A byte count as a quantity for people, rounded up: whole Gi from 10Gi, else Mi
    (Gi when exact)."""
    mib = -(-int(n_bytes) // 2**20)
    if mib >= 10 * 1024 or (mib and mib % 1024 == 0):
        return f"{-(-mib // 1024)}Gi"
    return f"{mib}Mi"
