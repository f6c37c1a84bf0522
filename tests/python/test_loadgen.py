"""corecast-loadgen against a real gateway: what bench/compare.sh relies on when it reports a
transport's figures (every session connects, every message reaches every member once and in
order, and a misbehaving server shows up as errors in the report, not as a quiet run).

Which loadgen binary: $CORECAST_LOADGEN_BIN, else target/release/corecast-loadgen.
"""

import json
import subprocess

import pytest

from gateway_process import release_binary

LOADGEN_TIMEOUT = 120


def run_loadgen(gw, tmp_path, *args):
    report_path = tmp_path / "loadgen.json"
    loadgen = release_binary("corecast-loadgen", "CORECAST_LOADGEN_BIN")
    run = subprocess.run(
        [str(loadgen), "--target", gw.public, "--admin", gw.internal,
         "--admin-token", gw.admin_token, "--jwt-secret", gw.jwt_secret,
         "--json", str(report_path), "--quiet", *map(str, args)],
        capture_output=True, text=True, timeout=LOADGEN_TIMEOUT)
    assert run.returncode == 0, f"loadgen failed:\n{run.stdout}\n{run.stderr}"
    return json.loads(report_path.read_text())


def test_polling_fanout_delivers_everything_once_and_in_order(start_gateway, tmp_path):
    """`--transport polling` against a gateway that serves polling only (a WebSocket would be
    refused, so every session really is long-polling), with 4 shards (each session's POST
    connection may land on another shard than its GET's) and a ping every 300 ms (each one
    answered by a POST, or the session would be dropped after 1 s): every session connects,
    and every message reaches each member of its group once, in order, with its ack."""
    gw = start_gateway(CORECAST_TRANSPORTS="polling", CORECAST_PING_INTERVAL_MS=300,
                       CORECAST_PING_TIMEOUT_MS=1000)
    conns = 40
    report = run_loadgen(gw, tmp_path, "--transport", "polling", "--conns", conns,
                         "--group-size", 10, "--rate", 40, "--duration", 3, "--warmup", 0.5)
    assert report["config"]["transport"] == "polling", report["config"]
    assert report["errors_total"] == 0, report["errors"]
    assert report["connect"][0]["ready"] == conns, report["connect"]
    s = report["send"]
    assert s["sent"] >= 100, s
    assert s["expected"] == s["sent"] * 10, s
    assert (s["lost"], s["duplicated"], s["out_of_order"]) == (0, 0, 0), s
    assert s["deliveries"] == s["expected"], s
    assert s["acks_ok"] == s["sent"], s


def test_polling_refused_shows_as_errors(start_gateway, tmp_path):
    """With polling turned off on the gateway, a polling run reports every session's refusal
    (the handshake's HTTP 400) instead of passing quietly."""
    gw = start_gateway(CORECAST_TRANSPORTS="websocket")
    conns = 10
    report = run_loadgen(gw, tmp_path, "--transport", "polling", "--scenario", "idle",
                         "--conns", conns, "--duration", 0.2)
    assert report["connect"][0]["ready"] == 0, report["connect"]
    assert report["connect"][0]["failed"] == conns, report["connect"]
    assert report["errors"] == {"http_400": conns}, report["errors"]


def test_the_report_breaks_a_message_s_time_down_by_hop(start_gateway, tmp_path):
    """The loadgen reads corecast's per-hop histograms before and after sending: every message
    passed the rate limit, the room's owner, the store and the way back once, and reached its
    group's shards, and each hop's mean fits inside the whole."""
    gw = start_gateway(CORECAST_SHARDS=2, CORECAST_RATE_LIMIT_PER_MIN=600)
    report = run_loadgen(gw, tmp_path, "--conns", 20, "--group-size", 10, "--rate", 20,
                         "--duration", 2, "--warmup", 0)
    assert report["errors_total"] == 0, report["errors"]
    sent = report["send"]["sent"]
    assert sent >= 20, report["send"]
    hops = {h["hop"]: h for h in report["breakdown"]}
    assert list(hops) == ["limiter", "owner", "store", "store_reply", "order", "fanout",
                          "socket", "total"], hops
    for hop in ("limiter", "owner", "store", "store_reply", "order"):
        assert hops[hop]["count"] == sent, (hop, hops[hop], sent)
    # Each message reaches the shards its group's members are on: one or two of them.
    assert sent <= hops["total"]["count"] <= 2 * sent, hops["total"]
    assert hops["fanout"]["count"] == hops["total"]["count"], hops
    inside = sum(hops[h]["mean_us"] for h in ("limiter", "owner", "store", "store_reply",
                                              "order", "fanout"))
    assert hops["total"]["mean_us"] == pytest.approx(inside, rel=0.15), hops


def test_recovery_storm_every_client_gets_what_it_missed_once(start_gateway, tmp_path):
    """`--scenario recovery-storm`: every client but each group's sender drops at once, 5
    messages go into each group while they are away, and all reconnect at once with their pid
    and offset while live traffic goes on: every one of them comes back recovered (the CONNECT
    answer carries the pid it sent) and gets each missed message once, and no live message is
    lost or duplicated either."""
    gw = start_gateway(CORECAST_ACCEPT_RATE=0, CORECAST_MAX_PENDING_PER_IP=0)
    conns, size, missed = 200, 10, 5
    report = run_loadgen(gw, tmp_path, "--scenario", "recovery-storm", "--conns", conns,
                         "--group-size", size, "--missed", missed, "--rate", 40,
                         "--warmup", 0.5, "--drain", 0.5, "--connect-timeout", 20)
    assert report["errors_total"] == 0, report["errors"]
    groups = conns // size
    clients = conns - groups  # each group's first member sends and stays connected
    r = report["recovery"]
    assert r["stored"] == groups * missed, r
    assert (r["clients"], r["back"], r["recovered"], r["fresh"]) == (clients, clients, clients, 0), r
    assert r["missed_expected"] == clients * missed, r
    assert (r["missed_lost"], r["missed_duplicated"]) == (0, 0), r
    assert r["complete"] == clients, r
    assert r["per_client"]["count"] == clients, r
    assert 0 < r["all_recovered_s"] < 20, r
    s = report["send"]
    assert s["sent"] > 0, s
    assert (s["lost"], s["duplicated"], s["out_of_order"]) == (0, 0, 0), s
