"""Wire formats, sans-I/O: SIP, SDP and H.225.0 RAS.

Imported as ``meter.codecs`` (never as a top-level ``codecs``, which is the standard library's).
Nothing here imports from ``meter``.
"""
