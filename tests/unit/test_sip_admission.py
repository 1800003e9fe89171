"""Admission ([auth]) in the SIP core, sans-I/O: digest for REGISTER (RFC 3261 §22.2) and for
requests from unknown sources (§22.3), the owner check on bindings (§10.3 step 3), answers a
scanner cannot tell apart, the source allow-list, inline pass-through, the credentials file and
`meter users`."""

from __future__ import annotations

import io
import json
import logging
import os
import stat

import pytest

from meter.cli import main
from meter.codecs.sip import Request, Response
from meter.sip.auth.admission import AUTH_FAILURES, AdmissionPolicy
from meter.sip.auth.settings import AuthSettings
from meter.sip.peer import Peer
from meter.store.credentials import CredentialsFile, add_user, read_entries
from tests.sipclient import CoreLab, Phone, Recorder, digest_answer

REALM = "lab.test"
PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw"}
ZONE_PEER = "10.0.0.99"


class ZoneRecorder(Recorder):
    """Hooks with one zone: Request-URIs at gw.test go to 10.9.9.9:5060 (an Expressway search rule)."""

    def route(self, request_uri):
        return "10.9.9.9:5060" if "@gw.test" in request_uri else None


def make_lab(tmp_path, mode="standalone", **auth):
    path = tmp_path / "credentials"
    for user, password in PASSWORDS.items():
        add_user(path, user, REALM, password)
    settings = AuthSettings(**{"enabled": True, "realm": REALM, **auth})
    policy = AdmissionPolicy(settings, CredentialsFile(path), trusted=lambda host: host == ZONE_PEER)
    lab = CoreLab(mode, policy=ZoneRecorder(), admission=policy)
    lab.credentials_path = path
    return lab


def answers(lab) -> list[Response]:
    return [m for m, _ in lab.net.take() if isinstance(m, Response)]


def register_with_password(lab, phone, password, *, user=None, expires=3600, contact=None, algorithm=None):
    lab.feed(phone.register(expires, contact=contact), phone)
    challenge, _ = lab.net.only()
    assert challenge.status == 401, challenge
    auth = digest_answer(challenge, user or phone.user, password, "REGISTER", f"sip:{phone.domain}", algorithm)
    lab.feed(phone.register(expires, contact=contact, headers=[auth]), phone)
    resp, _ = lab.net.only()
    return resp


def charged(lab) -> list:
    return lab.policy.events("register")


# -- REGISTER (RFC 3261 §22.2) ----------------------------------------------------------------------------

def test_rfc3261_22_2_register_without_credentials_gets_401_sha256_first_then_md5_and_no_charge(tmp_path):
    lab = make_lab(tmp_path)
    lab.feed(lab.alice.register(), lab.alice)
    resp, peer = lab.net.only()
    assert (resp.status, resp.reason) == (401, "Unauthorized")
    offers = resp.header_values("www-authenticate")
    assert [o.split("algorithm=")[1].split(",")[0] for o in offers] == ["SHA-256", "MD5"]  # RFC 8760 §2.4
    assert all(f'realm="{REALM}"' in o and 'qop="auth"' in o for o in offers)
    assert charged(lab) == [] and lab.core.location.lookup(lab.alice.aor, lab.clock.time()) == []


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
def test_rfc8760_register_with_the_right_password_either_algorithm_is_bound_and_charged(tmp_path, algorithm):
    lab = make_lab(tmp_path)
    resp = register_with_password(lab, lab.alice, "alice-pw", algorithm=algorithm)
    assert resp.status == 200, resp
    assert charged(lab) == [("register", lab.alice.aor, 3600)]
    assert len(lab.core.location.lookup(lab.alice.aor, lab.clock.time())) == 1


def test_wrong_password_and_unknown_user_get_the_same_new_challenge_and_a_log_line(tmp_path, caplog):
    lab = make_lab(tmp_path)
    caplog.set_level(logging.WARNING, logger="meter.sip.auth")
    wrong = register_with_password(lab, lab.alice, "guess")
    mallory = Phone("mallory", "10.0.0.66", 5070)
    unknown = register_with_password(lab, mallory, "guess")
    assert (wrong.status, wrong.reason) == (unknown.status, unknown.reason) == (401, "Unauthorized")
    assert "stale" not in wrong.header("www-authenticate")
    assert charged(lab) == []
    failures = [r for r in caplog.records if r.getMessage() == "sip.auth.failed"]
    assert [(r.facts["user"], r.facts["reason"]) for r in failures] == [("alice", "wrong password"),
                                                                       ("mallory", "unknown user")]
    assert failures[0].facts["source"] == "udp:10.0.0.2:5062"
    assert failures[1].facts["user_agent"] == "" and failures[1].facts["source"] == "udp:10.0.0.66:5070"
    assert not any("guess" in str(r.facts) or "pw" in str(r.facts) for r in failures)


def test_each_digest_failure_is_counted_by_reason_for_meter_sip_auth_failures_total(tmp_path):
    lab = make_lab(tmp_path)
    assert register_with_password(lab, lab.alice, "guess").status == 401
    assert register_with_password(lab, Phone("mallory", "10.0.0.66", 5070), "guess").status == 401
    assert register_with_password(lab, lab.alice, "bob-pw", user="bob").status == 403  # not the owner
    lab.feed(lab.alice.register(headers=[("Authorization", "Digest garbage")]), lab.alice)
    assert lab.net.only()[0].status == 401
    assert register_with_password(lab, lab.alice, "alice-pw").status == 200  # success counts nothing
    assert dict(lab.core.counters.auth_failures) == {"wrong_password": 1, "unknown_user": 1, "not_owner": 1,
                                                     "malformed": 1}
    assert set(lab.core.counters.auth_failures) <= set(AUTH_FAILURES)


def test_rfc7616_5_4_a_replayed_authorization_is_challenged_not_accepted(tmp_path):
    lab = make_lab(tmp_path)
    lab.feed(lab.alice.register(), lab.alice)
    challenge, _ = lab.net.only()
    auth = digest_answer(challenge, "alice", "alice-pw", "REGISTER", "sip:lab.test")
    lab.feed(lab.alice.register(headers=[auth]), lab.alice)
    assert lab.net.only()[0].status == 200
    lab.feed(lab.alice.register(expires=0, headers=[auth]), lab.alice)  # same nonce, same nc: a replay
    resp, _ = lab.net.only()
    assert resp.status == 401
    assert len(lab.core.location.lookup(lab.alice.aor, lab.clock.time())) == 1  # the unregister did not happen


def test_rfc7616_3_3_expired_nonce_gets_stale_true_and_the_retry_succeeds(tmp_path):
    lab = make_lab(tmp_path, nonce_lifetime=300.0)
    lab.feed(lab.alice.register(), lab.alice)
    challenge, _ = lab.net.only()
    lab.clock.advance(301)
    lab.feed(lab.alice.register(headers=[digest_answer(challenge, "alice", "alice-pw", "REGISTER", "sip:lab.test")]),
             lab.alice)
    stale, _ = lab.net.only()
    assert stale.status == 401 and all("stale=true" in v for v in stale.header_values("www-authenticate"))
    lab.feed(lab.alice.register(headers=[digest_answer(stale, "alice", "alice-pw", "REGISTER", "sip:lab.test")]),
             lab.alice)
    assert lab.net.only()[0].status == 200


def test_rfc3261_10_3_contact_star_and_binding_changes_only_by_the_aor_owner(tmp_path):
    lab = make_lab(tmp_path)
    assert register_with_password(lab, lab.alice, "alice-pw").status == 200
    # bob, with bob's own valid credentials, tries to unregister alice and to take over her alias
    as_bob = Phone("alice", "10.0.0.3", 5064)
    star = register_with_password(lab, as_bob, "bob-pw", user="bob", expires=0, contact="*")
    takeover = register_with_password(lab, as_bob, "bob-pw", user="bob")
    assert (star.status, takeover.status) == (403, 403)
    bindings = lab.core.location.lookup(lab.alice.aor, lab.clock.time())
    assert [b.contact for b in bindings] == [lab.alice.contact_uri]
    # the owner may
    assert register_with_password(lab, lab.alice, "alice-pw", expires=0, contact="*").status == 200
    assert lab.core.location.lookup(lab.alice.aor, lab.clock.time()) == []


# -- scanner resistance (svwar -m REGISTER / INVITE / OPTIONS) ------------------------------------------------

def _shape(resp: Response) -> tuple:
    """What a scanner can compare: status line and every header but the per-request ones."""
    skip = {"via", "from", "to", "call-id", "cseq", "content-length"}
    headers = tuple((n.lower(), v.split("nonce=")[0]) for n, v in resp.headers if n.lower() not in skip)
    return resp.status, resp.reason, headers


@pytest.mark.parametrize("method", ["REGISTER", "INVITE", "OPTIONS"])
def test_scanner_cannot_tell_registered_known_and_unknown_aliases_apart(tmp_path, method):
    lab = make_lab(tmp_path)
    assert register_with_password(lab, lab.alice, "alice-pw").status == 200  # registered
    assert register_with_password(lab, lab.bob, "bob-pw").status == 200
    assert register_with_password(lab, lab.bob, "bob-pw", expires=0).status == 200  # known, not registered now
    scanner = Phone("x", "10.0.0.66", 5070)
    shapes = []
    for alias in ("alice", "bob", "nobody"):
        uri = f"sip:{alias}@lab.test"
        req = (scanner.request("REGISTER", "sip:lab.test", to=uri) if method == "REGISTER"
               else scanner.request(method, uri))
        lab.feed(req, scanner)
        (resp,) = answers(lab)
        shapes.append(_shape(resp))
    assert shapes[0] == shapes[1] == shapes[2]
    assert shapes[0][0] == (401 if method == "REGISTER" else 407)


def test_auth_off_answers_tell_aliases_apart_as_documented(tmp_path):
    """With [auth] off (the default) the node answers as before: 404 unknown, 480 known but not
    registered. config/meter.toml says so and says to turn auth on for untrusted networks."""
    lab = CoreLab()
    lab.register(lab.bob)
    lab.register(lab.bob, expires=0)
    scanner = Phone("x", "10.0.0.66", 5070)
    statuses = []
    for alias in ("bob", "nobody"):
        lab.feed(scanner.request("INVITE", f"sip:{alias}@lab.test"), scanner)
        statuses.append([r.status for r in answers(lab)])
    assert statuses == [[480], [404]]


# -- initial requests from unknown sources (RFC 3261 §22.3, [auth] invite) ------------------------------------

def test_rfc3261_22_3_invite_from_unregistered_source_is_challenged_407_then_admitted(tmp_path):
    lab = make_lab(tmp_path)
    assert register_with_password(lab, lab.bob, "bob-pw").status == 200
    roaming = Phone("alice", "10.0.0.7", 5090)  # alice, not from her registered flow
    invite = roaming.request("INVITE", "sip:bob@lab.test")
    lab.feed(invite, roaming)
    (challenge,) = answers(lab)
    assert challenge.status == 407 and challenge.header("proxy-authenticate").startswith("Digest")
    assert lab.policy.events("invite") == []
    auth = digest_answer(challenge, "alice", "alice-pw", "INVITE", "sip:bob@lab.test")
    other_realm = ("Proxy-Authorization", 'Digest username="a", realm="upstream.test", nonce="n", uri="sip:x", '
                                          'response="00"')
    lab.feed(roaming.request("INVITE", "sip:bob@lab.test", headers=[auth, other_realm]), roaming)
    sent = lab.net.take()
    assert [m.status for m, _ in sent if isinstance(m, Response)] == [100]
    (at_bob,) = [(m, p) for m, p in sent if isinstance(m, Request)]
    assert at_bob[1].address == ("10.0.0.3", 5064)
    # RFC 3261 §22.3: the node's own realm's credentials are consumed, another realm's go on
    assert at_bob[0].header_values("proxy-authorization") == [other_realm[1]]
    assert len(lab.policy.events("invite")) == 1


def test_invite_with_valid_credentials_of_another_user_is_refused_403(tmp_path):
    lab = make_lab(tmp_path)
    roaming = Phone("alice", "10.0.0.7", 5090)
    lab.feed(roaming.request("INVITE", "sip:bob@lab.test"), roaming)
    (challenge,) = answers(lab)
    auth = digest_answer(challenge, "carol", "carol-pw", "INVITE", "sip:bob@lab.test")
    lab.feed(roaming.request("INVITE", "sip:bob@lab.test", headers=[auth]), roaming)
    assert [r.status for r in answers(lab)] == [403]


def test_invite_from_the_registered_flow_or_a_zone_peer_is_not_challenged(tmp_path):
    lab = make_lab(tmp_path)
    assert register_with_password(lab, lab.alice, "alice-pw").status == 200
    assert register_with_password(lab, lab.bob, "bob-pw").status == 200
    lab.feed(lab.alice.request("INVITE", "sip:bob@lab.test"), lab.alice)
    assert [r.status for r in answers(lab)] == [100]
    gateway = Phone("gw", ZONE_PEER, 5060)
    lab.feed(gateway.request("INVITE", "sip:bob@lab.test"), gateway)
    assert [r.status for r in answers(lab)] == [100]
    # alice's From from another port is not her registered flow
    other_port = Phone("alice", "10.0.0.2", 6000)
    lab.feed(other_port.request("INVITE", "sip:bob@lab.test"), other_port)
    assert [r.status for r in answers(lab)] == [407]


def test_auth_invite_refuse_answers_403_to_unregistered_sources(tmp_path):
    lab = make_lab(tmp_path, invite="refuse")
    stranger = Phone("x", "10.0.0.66", 5070)
    lab.feed(stranger.request("INVITE", "sip:bob@lab.test"), stranger)
    (resp,) = answers(lab)
    assert (resp.status, resp.reason) == (403, "Forbidden - authentication required")
    assert lab.policy.events("invite") == []


def test_auth_invite_route_lets_unregistered_sources_reach_zones_only(tmp_path):
    lab = make_lab(tmp_path, invite="route")
    assert register_with_password(lab, lab.bob, "bob-pw").status == 200
    stranger = Phone("x", "10.0.0.66", 5070)
    lab.feed(stranger.request("INVITE", "sip:bob@lab.test"), stranger)
    assert [r.status for r in answers(lab)] == [403]
    lab.feed(stranger.request("INVITE", "sip:conf@gw.test"), stranger)
    sent = lab.net.take()
    assert [p.address for m, p in sent if isinstance(m, Request)] == [("10.9.9.9", 5060)]
    assert len(lab.policy.events("invite")) == 1  # metered like any call to that zone


# -- the source allow-list ------------------------------------------------------------------------------------

def test_allow_list_drops_outsiders_silently_and_admits_inside_and_zone_peers(tmp_path):
    lab = make_lab(tmp_path, enabled=False, allow=["10.0.0.0/29"])
    outsider = Phone("x", "10.0.0.66", 5070)
    for method in ("OPTIONS", "REGISTER", "INVITE"):
        lab.feed(outsider.request(method, "sip:bob@lab.test"), outsider)
    assert lab.net.take() == [] and len(lab.core.txns.servers) == 0  # no answer, no state
    lab.register(lab.alice)  # 10.0.0.2 is inside
    gateway = Phone("gw", ZONE_PEER, 5060)
    lab.feed(gateway.request("OPTIONS", "sip:10.0.0.1:5060"), gateway)
    assert [r.status for r in answers(lab)] == [200]


def test_allow_list_logs_an_outsider_once_per_interval_with_bounded_memory(tmp_path, caplog):
    from meter.sip.auth.admission import LOGGED_SOURCES_CAP, OUTSIDER_LOG_INTERVAL

    lab = make_lab(tmp_path, enabled=False, allow=["10.0.0.0/29"])
    caplog.set_level(logging.INFO, logger="meter.sip.auth")
    outsider = Phone("x", "10.0.0.66", 5070)
    for _ in range(100):
        lab.feed(outsider.request("OPTIONS", "sip:10.0.0.1"), outsider)
    lab.clock.advance(OUTSIDER_LOG_INTERVAL)
    lab.feed(outsider.request("OPTIONS", "sip:10.0.0.1"), outsider)
    lines = [r for r in caplog.records if r.getMessage() == "sip.admission.outside_allow_list"]
    assert len(lines) == 2 and lines[0].facts["source"] == "udp:10.0.0.66:5070"
    assert lines[0].facts["user_agent"] == "" and lines[0].facts["method"] == "OPTIONS"
    for i in range(3 * LOGGED_SOURCES_CAP):
        lab.core.receive_datagram(outsider.request("OPTIONS", "sip:10.0.0.1").to_bytes(),
                                  Peer("udp", f"172.16.{i // 256}.{i % 256}", 5060))
    assert len(lab.core.admission._outsiders_logged) <= LOGGED_SOURCES_CAP


def test_allow_list_refuse_answers_403(tmp_path):
    lab = make_lab(tmp_path, enabled=False, allow=["192.0.2.1"], outsiders="refuse")
    lab.feed(lab.alice.register(), lab.alice)
    (resp,) = answers(lab)
    assert (resp.status, resp.reason) == (403, "Forbidden - source not allowed")
    assert charged(lab) == []


# -- inline: the upstream authenticates -------------------------------------------------------------------------

def test_inline_with_auth_enabled_node_never_challenges_and_upstream_401_passes_untouched(tmp_path):
    lab = make_lab(tmp_path, mode="inline")
    lab.feed(lab.alice.register(), lab.alice)
    forwarded, peer = lab.net.only()
    assert isinstance(forwarded, Request) and peer.address == ("10.0.0.50", 5060)
    upstream_challenge = 'Digest realm="kamailio", nonce="up-nonce", qop="auth", algorithm=MD5'
    from meter.codecs.sip import make_response
    lab.feed(make_response(forwarded, 401, headers=[("WWW-Authenticate", upstream_challenge)]), lab.upstream)
    (relayed,) = answers(lab)
    assert relayed.status == 401 and relayed.header_values("www-authenticate") == [upstream_challenge]
    assert lab.policy.events("bindings") == []
    assert lab.policy.events("register_failed") == [("register_failed", lab.alice.aor, "rejected 401")]


# -- the credentials file and `meter users` ---------------------------------------------------------------------

def test_running_node_picks_up_a_new_user_within_a_second(tmp_path):
    lab = make_lab(tmp_path)
    dave = Phone("dave", "10.0.0.8", 5066)
    assert register_with_password(lab, dave, "dave-pw").status == 401
    add_user(lab.credentials_path, "dave", REALM, "dave-pw")
    lab.clock.advance(1.0)
    assert register_with_password(lab, dave, "dave-pw").status == 200


def test_meter_users_add_list_remove_stores_ha1_only_with_mode_0600(tmp_path, monkeypatch, capsys):
    state = tmp_path / "state"
    state.mkdir()  # `meter init` made it: `meter users` never creates a state directory
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret-pw\n"))
    assert main(["users", "add", "erin", "--realm", REALM, "--password-stdin", "--state-dir", str(state)]) == 0
    path = state / "credentials"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert "s3cret-pw" not in path.read_text()
    (entry,) = read_entries(path)
    from meter.sip.auth.digest import ha1
    assert (entry.ha1_md5, entry.ha1_sha256) == (ha1("MD5", "erin", REALM, "s3cret-pw"),
                                                 ha1("SHA-256", "erin", REALM, "s3cret-pw"))
    capsys.readouterr()
    assert main(["users", "list", "--state-dir", str(state)]) == 0
    header, row, count = capsys.readouterr().out.splitlines()
    assert header.split() == ["USER", "REALM"] and row.split() == ["erin", REALM] and count == "(1 row)"
    assert header.index("REALM") == row.index(REALM)  # aligned
    assert main(["users", "list", "--json", "--state-dir", str(state)]) == 0
    assert json.loads(capsys.readouterr().out) == [{"user": "erin", "realm": REALM}]
    assert main(["users", "remove", "erin", "--realm", REALM, "--state-dir", str(state)]) == 0
    assert read_entries(path) == []
    assert main(["users", "remove", "erin", "--realm", REALM, "--state-dir", str(state)]) == 1


def test_config_rejects_unknown_auth_key_and_bad_values():
    from meter import config as cfg
    with pytest.raises(cfg.ConfigError, match=r"\[auth\] unknown key 'enable'"):
        cfg.parse("[auth]\nenable = true\n")
    with pytest.raises(cfg.ConfigError, match="allow"):
        cfg.parse('[auth]\nallow = ["10.0.0.300/8"]\n')
    with pytest.raises(cfg.ConfigError, match="algorithms"):
        cfg.parse('[auth]\nalgorithms = ["SHA-512-256"]\n')
    assert cfg.load(None).auth.enabled is False  # default off: today's behaviour holds


def test_app_builds_no_admission_when_auth_asks_for_nothing_else_one_with_zone_peers_trusted(tmp_path):
    from meter import config as cfg
    from meter.app import build_admission

    assert build_admission(cfg.load(None)) is None  # default: no per-request cost, today's behaviour
    config = cfg.parse(f'[node]\nstate_dir = "{tmp_path}"\n[auth]\nenabled = true\n'
                       '[[zones]]\nname = "ucm"\nkind = "unified_cm"\npeers = ["10.5.0.0/16"]\n')
    policy = build_admission(config)
    assert policy.trusted("10.5.1.2") and not policy.trusted("10.6.1.2")
    assert policy.credentials.path == tmp_path / "credentials"
