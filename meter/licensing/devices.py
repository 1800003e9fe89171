"""Device catalog: which model and software a registering endpoint is (R2, R3, R4).

Read from devices.toml (shipped as ``meter.shipped``; a lab passes its own path to extend it).
SIP rows are regexes searched in the User-Agent header, tried in file order, first match wins.
H.323 rows match the RRQ's endpointVendor productId/versionId; they only label the model, since
every H.323 registration takes a room license whatever it is (R4).

Software versions are compared within a train ("TC7.3.6", "CE8.2") and across trains in the
order the catalog lists them (TE < TC < CE): "TC7.3.6 or later" is met by any CE version, and a
version on a train the catalog does not know (a DX's Android firmware "10.2.1") meets nothing.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from typing import NamedTuple

SHIPPED_NAME = "devices.toml"
CLASSES = ("desktop", "room")
# Distinct User-Agent strings a node sees are few (models x firmware); bound the memo anyway.
_MEMO_LIMIT = 4096


class CatalogError(ValueError):
    """A devices file that cannot be used; the message names file, row, key and expectation."""


class Version(NamedTuple):
    train: str              # "TC", "CE", ... ("" when the string has no known train prefix)
    numbers: tuple[int, ...]

    def __str__(self) -> str:
        return self.train + ".".join(map(str, self.numbers))


_VERSION = re.compile(r"\s*(?P<train>[A-Za-z]*)\s*(?P<rest>\d[^\s)]*)")


def parse_version(text: str, aliases: dict[str, str] | None = None) -> Version | None:
    """'TC7.3.6.ea51021' -> Version('TC', (7, 3, 6)); the build hash after the numbers is ignored."""
    match = _VERSION.match(text or "")
    if match is None:
        return None
    train = match["train"].upper()
    if aliases:
        train = aliases.get(train, train)
    numbers = []
    for part in match["rest"].split("."):
        if not part.isdigit():
            break  # a build hash ("ea51021", "10bdaa53ce2") or suffix ends the version
        numbers.append(int(part))
    return Version(train, tuple(numbers)) if numbers else None


class DeviceMatch(NamedTuple):
    model: str             # catalog label, "" when no row matched
    device_class: str      # "desktop" or "room" after the version check (R2, R3)
    version: str           # software version read from the string, "" if none
    rules: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _SipRow:
    model: str
    pattern: re.Pattern
    device_class: str
    min_version: Version | None


@dataclass(frozen=True, slots=True)
class _H323Row:
    model: str
    product: re.Pattern
    version: re.Pattern | None


UNKNOWN_SIP = DeviceMatch("", "room", "", ("R2",))  # R2: every other SIP device is a room system


class DeviceCatalog:
    def __init__(self, sip_rows, h323_rows, version_pattern: re.Pattern, trains: tuple[str, ...],
                 train_aliases: dict[str, str]) -> None:
        self._sip: tuple[_SipRow, ...] = tuple(sip_rows)
        self._h323: tuple[_H323Row, ...] = tuple(h323_rows)
        self._version_pattern = version_pattern
        self._trains = trains
        self._aliases = train_aliases
        self._memo: dict[str, DeviceMatch] = {}
        self.registration_memo: dict = {}  # used by registrations.classify_registration

    # ---- loading ------------------------------------------------------------------------

    @classmethod
    def parse(cls, text: str, source: str = "<string>") -> DeviceCatalog:
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise CatalogError(f"{source}: not valid TOML: {exc}") from None
        unknown = sorted(set(raw) - {"defaults", "sip", "h323"})
        if unknown:
            raise CatalogError(f"{source}: unknown table [{unknown[0]}] (expected defaults, sip, h323)")
        defaults = raw.get("defaults", {})
        version_pattern = _regex(defaults.get("sip_version", r"\((?P<version>[^)]*)\)"),
                                 source, "defaults.sip_version")
        if "version" not in version_pattern.groupindex:
            raise CatalogError(f"{source}: defaults.sip_version: needs a named group (?P<version>...)")
        trains = tuple(str(t).upper() for t in defaults.get("trains", ["TC", "CE"]))
        aliases = {str(k).upper(): str(v).upper() for k, v in defaults.get("train_aliases", {}).items()}
        sip_rows = []
        for i, row in enumerate(raw.get("sip", [])):
            where = f"sip[{i}]"
            _only(row, {"model", "match", "class", "min_version", "source"}, source, where)
            model = _text(row, "model", source, where)
            device_class = row.get("class", "room")
            if device_class not in CLASSES:
                raise CatalogError(f"{source}: {where} ({model}) class: expected desktop or room, got {device_class!r}")
            min_version = None
            if "min_version" in row:
                min_version = parse_version(_text(row, "min_version", source, where), aliases)
                if min_version is None or min_version.train not in trains:
                    raise CatalogError(f"{source}: {where} ({model}) min_version: expected a version on one of "
                                       f"the trains {list(trains)}, got {row['min_version']!r}")
            sip_rows.append(_SipRow(model, _regex(_text(row, "match", source, where), source, where),
                                    device_class, min_version))
        h323_rows = []
        for i, row in enumerate(raw.get("h323", [])):
            where = f"h323[{i}]"
            _only(row, {"model", "product", "version", "source"}, source, where)
            version = row.get("version")
            h323_rows.append(_H323Row(
                _text(row, "model", source, where),
                _regex(_text(row, "product", source, where), source, where),
                _regex(version, source, where) if version else None,
            ))
        return cls(sip_rows, h323_rows, version_pattern, trains, aliases)

    # ---- matching -----------------------------------------------------------------------

    def match_sip(self, user_agent: str) -> DeviceMatch:
        """Model and class of a SIP User-Agent (R2, R3). Memoised per string."""
        found = self._memo.get(user_agent)
        if found is None:
            found = self._match_sip(user_agent)
            if len(self._memo) >= _MEMO_LIMIT:
                self._memo.clear()
            self._memo[user_agent] = found
        return found

    def _match_sip(self, user_agent: str) -> DeviceMatch:
        version_match = self._version_pattern.search(user_agent)
        version_text = version_match["version"] if version_match else ""
        for row in self._sip:
            if not row.pattern.search(user_agent):
                continue
            if row.device_class == "desktop" and row.min_version is not None:
                version = parse_version(version_text, self._aliases)
                if not self._at_least(version, row.min_version):
                    return DeviceMatch(row.model, "room", version_text, ("R3",))  # too old for desktop
                return DeviceMatch(row.model, "desktop", version_text, ("R2", "R3"))
            return DeviceMatch(row.model, row.device_class, version_text, ("R2",))
        return UNKNOWN_SIP._replace(version=version_text)

    def _at_least(self, version: Version | None, minimum: Version) -> bool:
        if version is None or version.train not in self._trains:
            return False
        have, need = self._trains.index(version.train), self._trains.index(minimum.train)
        if have != need:
            return have > need  # a later train is newer software
        return version.numbers >= minimum.numbers

    def match_h323(self, product_id: str, version_id: str = "") -> str:
        """Model label of an H.323 endpointVendor (R4 makes it a room whatever it says)."""
        for row in self._h323:
            if row.product.search(product_id) and (row.version is None or row.version.search(version_id)):
                return row.model
        return ""


def _only(row, keys: set[str], source: str, where: str) -> None:
    if not isinstance(row, dict):
        raise CatalogError(f"{source}: {where}: expected a table")
    unknown = sorted(set(row) - keys)
    if unknown:
        raise CatalogError(f"{source}: {where}: unknown key '{unknown[0]}' (expected: {', '.join(sorted(keys))})")


def _text(row: dict, key: str, source: str, where: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value:
        raise CatalogError(f"{source}: {where}: {key}: expected a non-empty string, got {value!r}")
    return value


def _regex(pattern: str, source: str, where: str) -> re.Pattern:
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise CatalogError(f"{source}: {where}: bad regex {pattern!r}: {exc}") from None
