"""Nonces that expire and cannot be replayed (RFC 7616 §3.3, §5.4; RFC 3261 §22.4).

Every nonce the node hands out is kept, in issue order, with the highest nonce-count used with
it: a request is accepted only with a nonce this table knows, younger than ``lifetime``, and a
nonce-count above the last one (qop=auth), or once (no qop, RFC 2069 endpoints). An unknown or
expired nonce is "stale": the client's digest was right but the nonce is not usable, so it is
challenged again with stale=true (RFC 7616 §3.3) and retries without asking its user.

Memory is bounded: the table holds at most ``capacity`` nonces; beyond that the oldest is
forgotten (its client sees stale=true once and retries). Issue order is expiry order (one
lifetime for all), so expired nonces are purged from the front in O(1) each.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from typing import Callable, Literal

# Kamailio's auth module tracks 2^20 nonce-counts in a 1 MiB array (nc_array_size) but keeps only
# one byte each; an entry here costs ~230 bytes (measured with tracemalloc), so 32768 in flight
# (~7 MiB) covers 100 challenges a second for the default 300 s lifetime, far above what the
# per-source limits let through.
NONCE_CAPACITY = 32768

Check = Literal["ok", "stale", "replay"]


class NonceTable:
    def __init__(self, lifetime: float, capacity: int = NONCE_CAPACITY,
                 token: Callable[[], str] = lambda: secrets.token_urlsafe(24)) -> None:
        self.lifetime = lifetime
        self.capacity = capacity
        self._token = token
        self._table: OrderedDict[str, list] = OrderedDict()  # nonce -> [issued_at, last nonce-count]

    def __len__(self) -> int:
        return len(self._table)

    def issue(self, now: float) -> str:
        self._purge(now)
        nonce = self._token()
        self._table[nonce] = [now, 0]
        while len(self._table) > self.capacity:
            self._table.popitem(last=False)
        return nonce

    def check(self, nonce: str, nc: str, now: float) -> Check:
        """``nc``: the nonce-count as sent (8 hex digits), or "" without qop (the nonce is then
        single-use). Call only once the digest itself was verified."""
        self._purge(now)
        entry = self._table.get(nonce)
        if entry is None:
            return "stale"  # expired and purged, forgotten, or from before a restart
        if not nc:
            del self._table[nonce]  # RFC 2069 style: no nonce-count, so one use only
            return "ok"
        count = int(nc, 16)
        if count <= entry[1]:
            return "replay"  # RFC 7616 §5.4: a nonce-count not above the last one is a replay
        entry[1] = count
        return "ok"

    def _purge(self, now: float) -> None:
        table, horizon = self._table, now - self.lifetime
        while table:
            nonce, entry = next(iter(table.items()))
            if entry[0] > horizon:
                return
            del table[nonce]
