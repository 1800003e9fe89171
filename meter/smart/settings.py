"""`[smart]` settings: where the Smart Software Manager is, what CA to trust, and every timer.

The transport chosen at registration (Direct, On-Prem or Proxy, S4) is part of the Smart state
(``meter.store.smart_state``), set through the API or CLI as on Expressway's page; this section
gives the Direct URL and the timers. Built by ``meter.config`` from the TOML table.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from meter.licensing.smart import DAY, SmartTimers


@dataclass(frozen=True)
class SmartSettings:
    direct_url: str = "https://localhost:8443/SmartTransport"
    """Transport Direct: the manager's base URL (contract C: https://host:port/SmartTransport)."""
    ca_file: str = ""
    """PEM file of the CA that signs the manager's HTTPS certificate. "" = the CA the manager sent at
    registration (kept in the state), else the system's trust store."""
    hostname: str = ""
    """The name sent to the manager at registration and renewal (S14). "" = this machine's hostname."""
    timeout: float = 10.0
    """Seconds to wait for the manager before an attempt counts as unreachable (S9)."""
    evaluation: float = 90 * DAY
    """S1: the evaluation period, in seconds."""
    evaluation_warning: float = 15 * DAY
    """Seconds before the end of the evaluation when the "evaluation ending" alarm is raised."""
    id_renew: float = 180 * DAY
    """S7: the ID certificate is renewed this often (the manager may say sooner)."""
    auth_renew: float = 30 * DAY
    """S7: authorization renewed this often (the manager's `renew_after` wins when it says)."""
    auth_expiry: float = 90 * DAY
    """S7: authorization lapses after this long without contact (the manager's `expires_at` wins)."""
    usage_interval: float = 6 * 3600.0
    """S11: usage reported this often."""
    retry: float = 15 * 60.0
    """S9: a failed attempt is repeated after this many seconds."""

    def __post_init__(self) -> None:
        url = urlsplit(self.direct_url)
        if url.scheme != "https" or not url.hostname:
            raise ValueError(f"direct_url: expected https://host[:port]/SmartTransport, got {self.direct_url!r}")
        if self.timeout <= 0:
            raise ValueError(f"timeout: expected a positive number of seconds, got {self.timeout}")
        self.timers()  # each timer positive (named in the error)

    def timers(self) -> SmartTimers:
        return SmartTimers(evaluation=self.evaluation, evaluation_warning=self.evaluation_warning,
                           id_renew=self.id_renew, auth_renew=self.auth_renew, auth_expiry=self.auth_expiry,
                           usage_interval=self.usage_interval, retry=self.retry)
