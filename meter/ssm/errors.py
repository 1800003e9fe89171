"""The protocol's error codes (contract C) and the HTTP status each is answered with."""

from __future__ import annotations

# code -> HTTP status. Every answer to a refused request is 4xx {"error": {"code", "message"}}.
STATUS = {
    "bad_request": 400,
    "clock_skew": 400,
    "token_invalid": 403,
    "token_expired": 403,
    "token_used_up": 403,
    "token_revoked": 403,
    "bad_signature": 401,
    "unknown_instance": 404,
}


class SmartError(Exception):
    """A refusal the manager answers with ``code`` (one of STATUS) and a sentence for the admin."""

    def __init__(self, code: str, message: str) -> None:
        if code not in STATUS:
            raise ValueError(f"no such error code: {code}")
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @property
    def status(self) -> int:
        return STATUS[self.code]

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}


class AdminError(Exception):
    """A lab-admin request that cannot be done (unknown account, bad tag...); the message says why."""
