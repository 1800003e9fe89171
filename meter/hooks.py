"""Calling the metering join's hooks from a protocol core, guarded.

The SIP core and the RAS gatekeeper call hooks inline with message handling. Nothing a hook does
may take the node down (docs/design.md principle 6): an exception is logged, counted in the core's
``hook_errors`` counter, and a question ("may this pass?") gets the core's own refusal instead.
One mechanism for both protocols; each core passes its logger, its counters and its refusal.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, TypeVar

Answer = TypeVar("Answer")


class HookCaller:
    """``ask`` a hook for a verdict, or ``notify`` it of an outcome; errors never propagate."""

    __slots__ = ("_log", "_counters", "_event")

    def __init__(self, log: logging.Logger, counters: Any, event: str) -> None:
        self._log = log
        self._counters = counters  # anything with an integer ``hook_errors`` attribute
        self._event = event        # log event name, e.g. "sip.hook_error"

    def ask(self, hook: Callable[..., Any], info: Any, *, on_error: Answer, expect: type,
            later: type | None = None) -> Answer:
        """The hook's verdict; ``on_error`` when it raised; a non-verdict answer counts as allow,
        which the caller expresses as ``expect``'s default instance. An instance of ``later`` (a
        verdict another process gives later, e.g. meter.sip.hooks.PendingVerdict) is returned as
        is: the caller waits for it, and continues inline when the answer is a verdict already."""
        try:
            verdict = hook(info)
        except Exception:
            self._failed(hook)
            return on_error
        if isinstance(verdict, expect):
            return verdict
        return verdict if later is not None and isinstance(verdict, later) else expect()

    def notify(self, hook: Callable[..., Any], *args: Any) -> None:
        try:
            hook(*args)
        except Exception:
            self._failed(hook)

    def call(self, hook: Callable[..., Answer], *args: Any, default: Answer) -> Answer:
        """A hook that answers a value (a lookup): ``default`` when it raised."""
        try:
            return hook(*args)
        except Exception:
            self._failed(hook)
            return default

    def _failed(self, hook: Callable[..., Any]) -> None:
        self._counters.hook_errors += 1
        self._log.exception(self._event, extra={"facts": {"hook": getattr(hook, "__name__", "?")}})
