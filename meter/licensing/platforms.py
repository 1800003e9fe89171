"""Platform capacity profiles (P3, R6) from platforms.toml.

A node's physical call capacity counts video and audio-only calls against each other: the guides
give ``calls_video`` and ``calls_audio`` as alternatives, so the node is full when
``video/calls_video + audio/calls_audio`` reaches 1. In integers: a video call weighs
``calls_audio``, an audio-only call ``calls_video``, and capacity is their product.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass

from meter.licensing.model import Media

SHIPPED_NAME = "platforms.toml"
_KEYS = ("calls_video", "calls_audio", "registrations", "mra_registrations", "max_rms_per_peer")


class PlatformError(ValueError):
    """A platforms file that cannot be used; the message names file, table, key and expectation."""


@dataclass(frozen=True, slots=True)
class Platform:
    name: str
    calls_video: int
    calls_audio: int
    registrations: int
    mra_registrations: int
    max_rms_per_peer: int

    @property
    def call_units(self) -> int:
        """Physical call capacity in weight units (see the module docstring)."""
        return self.calls_video * self.calls_audio

    def call_weight(self, media: str) -> int:
        """Weight of one call of class ``media``; set-up counts as video (C6)."""
        audio_only = media == Media.AUDIO_SIP or media == Media.AUDIO_OTHER
        return self.calls_video if audio_only else self.calls_audio


def parse(text: str, source: str = "<string>") -> dict[str, Platform]:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PlatformError(f"{source}: not valid TOML: {exc}") from None
    platforms = {}
    for name, table in raw.items():
        if not isinstance(table, dict):
            raise PlatformError(f"{source}: {name}: expected a table of {', '.join(_KEYS)}")
        unknown = sorted(set(table) - set(_KEYS))
        if unknown:
            raise PlatformError(f"{source}: [{name}] unknown key '{unknown[0]}' (expected: {', '.join(_KEYS)})")
        values = {}
        for key in _KEYS:
            value = table.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise PlatformError(f"{source}: [{name}] {key}: expected a positive integer, got {value!r}")
            values[key] = value
        if values["mra_registrations"] > values["registrations"]:
            raise PlatformError(f"{source}: [{name}] mra_registrations exceeds registrations (R6: MRA "
                                f"registrations count toward the registration cap)")
        platforms[name] = Platform(name=name, **values)
    if not platforms:
        raise PlatformError(f"{source}: no platform tables")
    return platforms
