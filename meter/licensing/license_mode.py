"""The license mode (L1-L4): PAK by default, Smart on request, back only through a factory reset.

Not to be confused with the ledger's *enforcement* (enforce / observe: does a misfit refuse?).
The Smart licensing state machine (S1-S14) is a later issue; this module only decides whether
the license mode may change and what Smart mode switches off (L3).
"""

from __future__ import annotations

PAK = "pak"
SMART = "smart"
LICENSE_MODES = (PAK, SMART)  # L1: exactly one is active
DEFAULT_LICENSE_MODE = PAK    # L1
PRODUCTS = ("expressway", "vcs")


class ModeRefused(Exception):
    """A license-mode change the product does not allow; ``rule`` names why."""

    def __init__(self, rule: str, message: str) -> None:
        self.rule = rule
        super().__init__(f"{rule}: {message}")


def switch_to_smart(license_mode: str, product: str) -> str:
    """L2: PAK -> Smart is an admin action at run time. Returns the new license mode."""
    if product == "vcs":
        raise ModeRefused("L4", "product vcs does not support Smart licensing")
    if product not in PRODUCTS:
        raise ValueError(f"product: expected one of {PRODUCTS}, got {product!r}")
    return SMART


def switch_to_pak(license_mode: str) -> str:
    """L2: there is no way back but a factory reset."""
    if license_mode == SMART:
        raise ModeRefused("L2", "Smart -> PAK only through a factory reset (meter factory-reset)")
    return PAK
