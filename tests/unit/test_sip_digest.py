"""Digest math and nonces (RFC 3261 §22, RFC 7616, RFC 2617, RFC 8760), against the RFCs' own
test vectors; nonce expiry, replay and the memory bound."""

from __future__ import annotations

import pytest

from meter.sip.auth import digest
from meter.sip.auth.digest import DigestError, parse_credentials
from meter.sip.auth.nonces import NonceTable

# RFC 7616 §3.9.1: the same request answered with SHA-256 and with MD5.
RFC7616 = dict(user="Mufasa", realm="http-auth@example.org", password="Circle of Life", method="GET",
               uri="/dir/index.html", nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", nc="00000001",
               cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ")


@pytest.mark.parametrize("algorithm, expected", [
    ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
])
def test_rfc7616_3_9_1_response_vectors(algorithm, expected):
    v = RFC7616
    ha1 = digest.ha1(algorithm, v["user"], v["realm"], v["password"])
    assert digest.response(algorithm, ha1, v["nonce"], v["method"], v["uri"], "auth", v["nc"], v["cnonce"]) == expected


def test_rfc2617_3_5_md5_qop_auth_vector():
    ha1 = digest.ha1("MD5", "Mufasa", "testrealm@host.com", "Circle Of Life")
    assert digest.response("MD5", ha1, "dcd98b7102dd2f0e8b11d0f600bfb0c093", "GET", "/dir/index.html", "auth",
                           "00000001", "0a4f113b") == "6629fae49393a05397450978507c4ef1"


def test_rfc2069_no_qop_response_is_h_ha1_nonce_ha2():
    ha1 = digest.ha1("MD5", "bob", "r", "pw")
    ha2 = digest.h("MD5", "REGISTER:sip:r")
    assert digest.response("MD5", ha1, "n1", "REGISTER", "sip:r") == digest.h("MD5", f"{ha1}:n1:{ha2}")


def test_rfc8760_challenge_names_algorithm_and_qop_auth_and_stale():
    value = digest.challenge("lab.test", "abc", "SHA-256", stale=True)
    assert value == 'Digest realm="lab.test", nonce="abc", algorithm=SHA-256, qop="auth", stale=true'
    assert "stale" not in digest.challenge("lab.test", "abc", "MD5")


def test_rfc7616_3_4_parse_credentials_quoted_and_tokens():
    c = parse_credentials('Digest username="Mufasa", realm="http-auth@example.org", nonce="7ypf", '
                          'uri="/dir/index.html", algorithm=sha-256, qop=auth, nc=00000001, cnonce="f2/w", '
                          'response="753927FA", opaque="x"')
    assert (c.username, c.algorithm, c.qop, c.nc, c.cnonce, c.response) == (
        "Mufasa", "SHA-256", "auth", "00000001", "f2/w", "753927fa")


def test_rfc7616_3_3_absent_algorithm_means_md5_and_quoted_pair_unescaped():
    c = parse_credentials(r'Digest username="a\"b", realm="r", nonce="n", uri="sip:r", response="x"')
    assert c.algorithm == "MD5" and c.username == 'a"b' and c.qop is None


@pytest.mark.parametrize("value", [
    'Basic YWxhZGRpbjpvcGVuc2VzYW1l',
    'Digest username="a", realm="r", nonce="n", uri="u"',                       # no response
    'Digest username="a", realm="r", nonce="n", uri="u", response="x", algorithm=SHA-512-256',
    'Digest username="a", realm="r", nonce="n", uri="u", response="x", qop=auth-int, nc=00000001, cnonce="c"',
    'Digest username="a", realm="r", nonce="n", uri="u", response="x", qop=auth, nc=1, cnonce="c"',
    'Digest username="a", realm="r", nonce="n", uri="u", response="x", qop=auth, nc=00000001',
    'Digest username="a" realm="r"',
])
def test_rfc7616_unreadable_or_unoffered_credentials_are_refused(value):
    with pytest.raises(DigestError):
        parse_credentials(value)


# -- nonces (RFC 7616 §3.3 stale, §5.4 replay) ---------------------------------------------------------------

def test_rfc7616_5_4_nonce_count_must_increase():
    table = NonceTable(lifetime=300)
    n = table.issue(0.0)
    assert table.check(n, "00000001", 1.0) == "ok"
    assert table.check(n, "00000001", 2.0) == "replay"
    assert table.check(n, "00000003", 3.0) == "ok"
    assert table.check(n, "00000002", 4.0) == "replay"


def test_rfc2069_nonce_without_qop_is_single_use():
    table = NonceTable(lifetime=300)
    n = table.issue(0.0)
    assert table.check(n, "", 1.0) == "ok"
    assert table.check(n, "", 2.0) == "stale"


def test_rfc7616_3_3_expired_or_unknown_nonce_is_stale():
    table = NonceTable(lifetime=300)
    n = table.issue(0.0)
    assert table.check(n, "00000001", 299.0) == "ok"
    assert table.check(n, "00000002", 300.5) == "stale"
    assert table.check("never-issued", "00000001", 1.0) == "stale"


def test_nonce_table_memory_is_bounded_and_expired_nonces_are_purged():
    table = NonceTable(lifetime=300, capacity=1000)
    first = table.issue(0.0)
    for i in range(100_000):
        table.issue(i * 0.001)
    assert len(table) == 1000
    assert table.check(first, "00000001", 100.0) == "stale"  # forgotten: its client retries once
    table.issue(1000.0)
    assert len(table) == 1  # everything older than the lifetime went


def test_nonces_are_unguessable_and_distinct():
    table = NonceTable(lifetime=300)
    nonces = {table.issue(0.0) for _ in range(1000)}
    assert len(nonces) == 1000 and all(len(n) >= 32 for n in nonces)
