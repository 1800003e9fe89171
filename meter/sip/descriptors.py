"""How many SIP connections the process's file-descriptor limit allows, checked once at start.

Every TCP or TLS connection holds a descriptor; when they run out, ``accept`` fails for every
listener, the admin server's included. So the connection cap is kept under the limit
(RLIMIT_NOFILE) less a reserve for everything else (HAProxy derives its maxconn the same way).
"""

from __future__ import annotations

import resource
from typing import Callable, NamedTuple

RLIM_INFINITY = resource.RLIM_INFINITY


class Budget(NamedTuple):
    connections: int  # the cap to enforce: the one asked for, or lower
    limit: int  # the soft RLIMIT_NOFILE in force after start


def connection_budget(requested: int, reserve: int, *,
                      getrlimit: Callable[[int], tuple[int, int]] = resource.getrlimit,
                      setrlimit: Callable[[int, tuple[int, int]], None] = resource.setrlimit) -> Budget:
    """The connection cap the descriptor limit allows. The soft limit is first raised towards the
    hard one as far as ``requested + reserve`` needs (Go's runtime raises it to the hard limit at
    start since 1.19; the soft 1024 exists for select(), which asyncio does not use)."""
    soft, hard = getrlimit(resource.RLIMIT_NOFILE)
    wanted = requested + reserve
    if soft != RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == RLIM_INFINITY else min(wanted, hard)
        try:
            setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (OSError, ValueError):
            pass  # keep the soft limit we have; the cap below respects it
    if soft == RLIM_INFINITY:
        return Budget(requested, soft)
    return Budget(max(1, min(requested, soft - reserve)), soft)
