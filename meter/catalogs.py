"""The licensing domain's reference data, read from disk: platform capacity profiles
(``platforms.toml``, P3) and device models (``devices.toml``, R1-R3), the shipped copies (package
data ``meter.shipped``) or a lab's own file. The pure domain (``meter.licensing``) only parses the
text it is given; reading files is this shell's job.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from meter.licensing import platforms as platform_profiles
from meter.licensing.devices import SHIPPED_NAME as DEVICES_NAME, CatalogError, DeviceCatalog
from meter.licensing.platforms import SHIPPED_NAME as PLATFORMS_NAME, Platform, PlatformError


def _read(path: str | Path | None, shipped: str, error: type[Exception]) -> tuple[str, str]:
    """(text, source name for error messages)."""
    if path is None:
        return (resources.files("meter.shipped") / shipped).read_text(encoding="utf-8"), f"<shipped {shipped}>"
    try:
        return Path(path).read_text(encoding="utf-8"), str(path)
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror}") from None


def platforms(path: str | Path | None = None) -> dict[str, Platform]:
    """The shipped capacity profiles, or a lab's own file at ``path``."""
    text, source = _read(path, PLATFORMS_NAME, PlatformError)
    return platform_profiles.parse(text, source=source)


def platform(name: str, path: str | Path | None = None) -> Platform:
    known = platforms(path)
    try:
        return known[name]
    except KeyError:
        raise PlatformError(f"unknown platform {name!r} (expected one of: {', '.join(sorted(known))})") from None


def device_catalog(path: str | Path | None = None) -> DeviceCatalog:
    text, source = _read(path, DEVICES_NAME, CatalogError)
    return DeviceCatalog.parse(text, source=source)
