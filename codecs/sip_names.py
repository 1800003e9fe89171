"""SIP header names: compact forms, canonical spelling, list-valued and single-valued headers, reason phrases.

Tables, not if-chains: the message layer indexes header lines by the canonical lower-case long
name, so ``v``, ``Via`` and ``VIA`` are one header.
"""

from __future__ import annotations

# RFC 3261 §7.3.3 compact forms (c e f i k l m s t v) plus those of later RFCs registered at IANA.
COMPACT_FORMS: dict[str, str] = {
    "a": "accept-contact",      # RFC 3841
    "b": "referred-by",         # RFC 3892
    "c": "content-type",
    "d": "request-disposition",  # RFC 3841
    "e": "content-encoding",
    "f": "from",
    "i": "call-id",
    "j": "reject-contact",      # RFC 3841
    "k": "supported",
    "l": "content-length",
    "m": "contact",
    "n": "identity-info",       # RFC 4474
    "o": "event",               # RFC 6665
    "r": "refer-to",            # RFC 3515
    "s": "subject",
    "t": "to",
    "u": "allow-events",        # RFC 6665
    "v": "via",
    "x": "session-expires",     # RFC 4028
    "y": "identity",            # RFC 8224
}

# Spelling used when this codec writes a header line itself (lines it did not write keep theirs).
_SPECIAL_SPELLING = {
    "call-id": "Call-ID", "cseq": "CSeq", "www-authenticate": "WWW-Authenticate",
    "mime-version": "MIME-Version", "rack": "RAck", "rseq": "RSeq", "sip-etag": "SIP-ETag",
    "sip-if-match": "SIP-If-Match", "p-asserted-identity": "P-Asserted-Identity",
}

# Headers whose value is a comma-separated list (RFC 3261 §7.3.1, §20; grammar uses *(COMMA ...)).
# Not here on purpose: Authorization/WWW-Authenticate family (commas separate auth-params),
# Date, Retry-After, From, To, Call-ID, CSeq and other single values.
LIST_HEADERS: frozenset[str] = frozenset({
    "via", "route", "record-route", "contact", "allow", "supported", "require", "proxy-require",
    "unsupported", "accept", "accept-encoding", "accept-language", "content-encoding",
    "content-language", "allow-events", "path", "service-route", "in-reply-to", "alert-info",
    "call-info", "error-info", "warning", "p-asserted-identity", "p-preferred-identity",
    "accept-contact", "reject-contact", "request-disposition", "security-client",
    "security-server", "security-verify", "reason", "history-info", "privacy",
})

# RFC 4475 §3.3.8 multi01: these may appear at most once (RFC 3261 §7.3.1: only list headers repeat).
SINGLE_HEADERS: tuple[str, ...] = (
    "to", "from", "call-id", "cseq", "max-forwards", "content-length",
)


def canonical(name: str) -> str:
    """``"V"`` -> ``"via"``; ``"Call-Id"`` -> ``"call-id"``."""
    low = name.lower()
    return COMPACT_FORMS.get(low, low)


def spelling(key: str) -> str:
    """``"call-id"`` -> ``"Call-ID"``, ``"record-route"`` -> ``"Record-Route"``."""
    s = _SPECIAL_SPELLING.get(key)
    if s is not None:
        return s
    return "-".join(p[:1].upper() + p[1:] for p in key.split("-"))


# RFC 3261 §21 plus the common extension codes (RFC 3262, 3265, 3329, 3903, 4028, 4412, 5079, 5360,
# 6086, 3891, 4474/8224).
REASON_PHRASES: dict[int, str] = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 199: "Early Dialog Terminated",
    200: "OK", 202: "Accepted", 204: "No Notification",
    300: "Multiple Choices", 301: "Moved Permanently", 302: "Moved Temporarily",
    305: "Use Proxy", 380: "Alternative Service",
    400: "Bad Request", 401: "Unauthorized", 402: "Payment Required", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 406: "Not Acceptable",
    407: "Proxy Authentication Required", 408: "Request Timeout", 410: "Gone",
    412: "Conditional Request Failed", 413: "Request Entity Too Large",
    414: "Request-URI Too Long", 415: "Unsupported Media Type", 416: "Unsupported URI Scheme",
    417: "Unknown Resource-Priority", 420: "Bad Extension", 421: "Extension Required",
    422: "Session Interval Too Small", 423: "Interval Too Brief", 428: "Use Identity Header",
    429: "Provide Referrer Identity", 433: "Anonymity Disallowed", 436: "Bad Identity-Info",
    437: "Unsupported Certificate", 438: "Invalid Identity Header", 439: "First Hop Lacks Outbound Support",
    469: "Bad Info Package", 470: "Consent Needed",
    480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist", 482: "Loop Detected",
    483: "Too Many Hops", 484: "Address Incomplete", 485: "Ambiguous", 486: "Busy Here",
    487: "Request Terminated", 488: "Not Acceptable Here", 489: "Bad Event", 491: "Request Pending",
    493: "Undecipherable", 494: "Security Agreement Required",
    500: "Server Internal Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Server Time-out", 505: "Version Not Supported",
    513: "Message Too Large", 555: "Push Notification Service Not Supported", 580: "Precondition Failure",
    600: "Busy Everywhere", 603: "Decline", 604: "Does Not Exist Anywhere", 606: "Not Acceptable",
    607: "Unwanted", 608: "Rejected",
}


def reason_phrase(status: int) -> str:
    """The table's phrase, else the class's x00 phrase (RFC 3261 §21: unknown codes act like x00)."""
    return REASON_PHRASES.get(status) or REASON_PHRASES.get(status // 100 * 100, "Unknown")
