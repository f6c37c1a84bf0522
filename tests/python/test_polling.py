"""Engine.IO long-polling, the upgrade to WebSocket, CORS and the transports setting, case by
case from the engine.io-protocol v4 specification and the reference server's answers: the
handshake, GET/POST traffic, the heartbeat, close, noop during an upgrade, the probe, every
error answer (`{"code", "message"}`), overlapping requests, `maxPayload` on POST bodies, routing
by sid across shards, and the official python client on polling alone and with the upgrade.

Raw cases use polling_client.PollingClient (requests) and raw_client.RawClient
(websocket-client); every wait is bounded.
"""

import json
import socket
import threading
import time

import pytest
import requests

from polling_client import SEP, PollingClient
from raw_client import RawClient, RecvTimeout

PING_INTERVAL_MS = 400
PING_TIMEOUT_MS = 1200
MAX_PAYLOAD = 4000

GATEWAY_ENV = {
    "CORECAST_PING_INTERVAL_MS": PING_INTERVAL_MS,
    "CORECAST_PING_TIMEOUT_MS": PING_TIMEOUT_MS,
    "CORECAST_MAX_PAYLOAD": MAX_PAYLOAD,
    "CORECAST_UPGRADE_TIMEOUT_MS": 1500,
}


@pytest.fixture
def gw(module_gateway):
    return module_gateway


def eio_error(r: requests.Response):
    """(status, code, message) of an Engine.IO error answer."""
    body = r.json()
    return r.status_code, body["code"], body["message"]


def url(gw, **params):
    q = "&".join(f"{k}={v}" for k, v in {"EIO": "4", **params}.items())
    return f"http://{gw.public}/socket.io/?{q}"


# ----- handshake ---------------------------------------------------------------------------------

def test_handshake_answers_the_open_packet_with_the_websocket_upgrade(gw):
    c = PollingClient(gw.public)
    r = c.open_response
    assert r.headers["Content-Type"].startswith("text/plain"), r.headers
    assert "Access-Control-Allow-Origin" not in r.headers, "no Origin sent, no CORS headers"
    o = c.open
    assert o["upgrades"] == ["websocket"], o
    assert o["pingInterval"] == PING_INTERVAL_MS and o["pingTimeout"] == PING_TIMEOUT_MS, o
    assert o["maxPayload"] == MAX_PAYLOAD, o
    assert isinstance(o["sid"], str) and len(o["sid"]) >= 20, o


@pytest.mark.parametrize("params,method,status,code,message", [
    ({"transport": "carrier-pigeon"}, "GET", 400, 0, "Transport unknown"),
    ({}, "GET", 400, 0, "Transport unknown"),
    ({"transport": "polling", "sid": "nope"}, "GET", 400, 1, "Session ID unknown"),
    ({"transport": "polling", "sid": "0" * 36}, "GET", 400, 1, "Session ID unknown"),
    ({"transport": "polling", "sid": "0" * 36}, "POST", 400, 1, "Session ID unknown"),
    ({"transport": "polling"}, "POST", 400, 2, "Bad handshake method"),
    ({"transport": "websocket"}, "GET", 400, 3, "Bad request"),  # no Upgrade header
])
def test_engine_io_error_answers(gw, params, method, status, code, message):
    r = requests.request(method, url(gw, **params), data="" if method == "POST" else None,
                         timeout=10)
    assert r.headers["Content-Type"] == "application/json", r.headers
    assert eio_error(r) == (status, code, message)


def test_unsupported_protocol_version(gw):
    r = requests.get(f"http://{gw.public}/socket.io/?EIO=3&transport=polling", timeout=10)
    assert eio_error(r) == (400, 5, "Unsupported protocol version")


def test_an_unknown_method_on_a_session_is_a_bad_request(gw):
    c = PollingClient(gw.public)
    r = requests.put(url(gw, transport="polling", sid=c.sid), data="x", timeout=10)
    assert eio_error(r) == (400, 3, "Bad request")


# ----- traffic -------------------------------------------------------------------------------------

def test_chat_over_raw_polling_on_fresh_tcp_connections(gw, make_group):
    """CONNECT, an event with an ack and the broadcast, each request on a new TCP connection
    (so on whichever shard the kernel picks; the session lives on one)."""
    gid, (u,) = make_group(gw, 1)
    c = PollingClient(gw.public)
    answer = c.connect(gw.token(u))
    assert isinstance(answer.get("sid"), str), answer
    ack = c.call("sendMessage", {"groupId": gid, "text": "over polling", "attachments": []}, ack_id=3)
    assert ack["ok"] is True, ack
    msg = c.wait_event("newMessage", lambda m: m["id"] == ack["id"])
    assert msg["text"] == "over polling" and msg["senderId"] == u, msg


def test_one_post_carries_several_packets(gw, make_group):
    gid, (u,) = make_group(gw, 1)
    c = PollingClient(gw.public)
    c.connect(gw.token(u))
    c.post(*[f"42{i}" + json.dumps(["sendMessage", {"groupId": gid, "text": f"m{i}", "attachments": []}])
             for i in range(1, 4)])
    acks = {}
    for _ in range(20):
        for p in c.get():
            if p.startswith("43"):
                acks[int(p[2])] = json.loads(p[3:])[0]
        if len(acks) == 3:
            break
    assert sorted(acks) == [1, 2, 3] and all(a["ok"] for a in acks.values()), acks
    assert [m["text"] for m in gw.history(gid)] == ["m3", "m2", "m1"]


def test_a_keep_alive_connection_serves_sessions_of_every_shard(gw, make_group):
    """One keep-alive connection (as a browser reuses one) carries requests for several
    sessions, which live on different shards: it is handed from shard to shard."""
    gid, users = make_group(gw, 6)
    shared = requests.Session()
    sids = set()
    for i, u in enumerate(users):
        c = PollingClient(gw.public)
        c.http = shared
        c.connect(gw.token(u))
        sids.add(c.sid)
        ack = c.call("sendMessage", {"groupId": gid, "text": f"from {i}", "attachments": []})
        assert ack["ok"] is True, ack
        assert c.wait_event("newMessage", lambda m: m["id"] == ack["id"])["senderId"] == u
    assert sorted(m["text"] for m in gw.history(gid)) == [f"from {i}" for i in range(6)]
    shards = {sid[24:28] for sid in sids}  # the shard, after the salt and the node (engine.rs)
    assert len(shards) > 1, f"all six sessions landed on one shard ({shards}): routing not exercised"


def test_heartbeat_over_polling(gw, make_group):
    """The server pings in a GET answer; a client that pongs stays, one that does not is closed
    (its next GET finds the session gone)."""
    gid, (u,) = make_group(gw, 1)
    c = PollingClient(gw.public)
    c.connect(gw.token(u))
    pings = 0
    for _ in range(20):
        packets = c.get()
        if "2" in packets:
            pings += 1
            c.post("3")
            if pings == 3:
                break
    assert pings == 3
    assert c.call("sendMessage", {"groupId": gid, "text": "alive", "attachments": []})["ok"]

    quiet = PollingClient(gw.public)
    quiet.connect(gw.token(u))
    seen = []
    for _ in range(10):
        r = quiet.get_raw()
        if r.status_code != 200:
            break
        seen += r.text.split(SEP)
        if "1" in seen:
            break
    assert "2" in seen, seen
    r = quiet.get_raw()
    assert eio_error(r) == (400, 1, "Session ID unknown"), seen


def test_client_close_packet_ends_the_session(gw, make_group):
    gid, (u,) = make_group(gw, 1)
    c = PollingClient(gw.public)
    c.connect(gw.token(u))
    c.post("1")
    assert eio_error(c.get_raw()) == (400, 1, "Session ID unknown")


def test_overlapping_gets_end_the_session(gw):
    """Two GETs at once: whichever comes second is refused (400, code 3), and the session ends:
    the waiting one is answered with the close packet, later requests find no session."""
    c = PollingClient(gw.public)
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(c.get_raw(timeout=10))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert len(answers) == 2, answers
    refused = [r for r in answers if r.status_code == 400]
    answered = [r for r in answers if r.status_code == 200]
    assert len(refused) == 1 and len(answered) == 1, [(r.status_code, r.text) for r in answers]
    assert eio_error(refused[0]) == (400, 3, "Bad request")
    assert answered[0].text.split(SEP)[-1] == "1", answered[0].text  # the close packet
    assert eio_error(c.get_raw()) == (400, 1, "Session ID unknown")


def test_post_over_max_payload_is_refused_and_ends_the_session(gw):
    c = PollingClient(gw.public)
    r = c.post_raw(b"4" + b"x" * (MAX_PAYLOAD + 10))
    assert r.status_code == 413, (r.status_code, r.text)
    assert eio_error(c.get_raw()) == (400, 1, "Session ID unknown")


def test_undecodable_packet_over_polling_closes_the_session(gw, make_group):
    gid, (u,) = make_group(gw, 1)
    c = PollingClient(gw.public)
    c.connect(gw.token(u))
    c.post('42{"not":"an array"}')
    assert c.wait(lambda p: p == "1") == "1"
    assert eio_error(c.get_raw()) == (400, 1, "Session ID unknown")


# ----- upgrade -------------------------------------------------------------------------------------

def ws_upgrade(gw, sid, **kw):
    return RawClient(gw.public, query=f"EIO=4&transport=websocket&sid={sid}", expect_open=False, **kw)


def test_upgrade_probe_noop_and_switch(gw, make_group):
    gid, (u,) = make_group(gw, 1)
    c = PollingClient(gw.public)
    c.connect(gw.token(u))
    pending = {}
    t = threading.Thread(target=lambda: pending.setdefault("packets", c.get(timeout=10)))
    t.start()
    ws = ws_upgrade(gw, c.sid)
    ws.send("2probe")
    assert ws.recv() == "3probe"
    t.join(10)
    assert pending["packets"] == ["6"], pending  # the waiting GET is released with a noop
    ws.send("5")
    ack = ws.call("sendMessage", {"groupId": gid, "text": "after upgrade", "attachments": []})
    assert ack["ok"] is True, ack
    assert ws.wait_event("newMessage", lambda m: m["id"] == ack["id"])["text"] == "after upgrade"
    # The session now lives on the WebSocket: polling it is a bad request, and so is a second
    # WebSocket for it.
    assert eio_error(c.get_raw()) == (400, 3, "Bad request")
    r = requests.post(url(gw, transport="polling", sid=c.sid), data="3", timeout=10)
    assert eio_error(r) == (400, 3, "Bad request")
    with pytest.raises(Exception) as e:
        ws_upgrade(gw, c.sid)
    assert "400" in str(e.value), e.value
    # And the heartbeat goes on over the WebSocket.
    before = ws.pings
    deadline = time.monotonic() + 10
    while ws.pings < before + 2:  # recv() answers pings itself and counts them
        assert time.monotonic() < deadline, "no pings over the upgraded WebSocket"
        try:
            ws.backlog.append(ws.recv(0.2))
        except RecvTimeout:
            pass
        assert ws.closed is None, ws.closed


def test_packets_queued_during_the_probe_arrive_on_the_websocket(gw, make_group, connect):
    gid, (u, v) = make_group(gw, 2)
    other = connect(gw, v)
    c = PollingClient(gw.public)
    c.connect(gw.token(u))
    ws = ws_upgrade(gw, c.sid)
    ws.send("2probe")
    assert ws.recv() == "3probe"
    ack = other.call("sendMessage", {"groupId": gid, "text": "during the probe", "attachments": []})
    assert ack["ok"] is True, ack
    ws.send("5")
    assert ws.wait_event("newMessage", lambda m: m["id"] == ack["id"])["text"] == "during the probe"


def test_a_probe_that_never_upgrades_times_out_and_polling_goes_on(gw, make_group):
    gid, (u,) = make_group(gw, 1)
    c = PollingClient(gw.public)
    c.connect(gw.token(u))
    ws = ws_upgrade(gw, c.sid)
    ws.send("2probe")
    assert ws.recv() == "3probe"
    closed = ws.wait_close(timeout=10)  # the upgrade timeout (1.5 s here) ends the probe
    assert closed is not None
    ack = c.call("sendMessage", {"groupId": gid, "text": "still polling", "attachments": []})
    assert ack["ok"] is True, ack


def test_upgrade_for_an_unknown_sid_is_refused(gw):
    with pytest.raises(Exception) as e:
        ws_upgrade(gw, "0" * 28)
    assert "400" in str(e.value), e.value


def test_bytes_pipelined_after_the_upgrade_request_are_kept(gw, make_group):
    """A client that sends its first frames right behind the upgrade request, before it reads
    the 101, is served as if it had waited."""
    gid, (u,) = make_group(gw, 1)
    host, port = gw.public.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=10)
    try:
        connect_packet = ("40" + json.dumps({"token": gw.token(u)})).encode()
        mask = b"\x01\x02\x03\x04"
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(connect_packet))
        assert len(connect_packet) < 65536
        header = bytes([0x81, 0x80 | 126]) + len(connect_packet).to_bytes(2, "big") if len(connect_packet) > 125 \
            else bytes([0x81, 0x80 | len(connect_packet)])
        s.sendall(b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\n"
                  b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n" + header + mask + masked)
        got = b""
        while b"40{\"sid\"" not in got:
            chunk = s.recv(65536)
            assert chunk, f"connection closed; got {got!r}"
            got += chunk
        assert got.startswith(b"HTTP/1.1 101"), got[:80]
    finally:
        s.close()


# ----- CORS and origins ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def origins_gw(request, tmp_path_factory):
    from gateway_process import GatewayProcess
    d = tmp_path_factory.mktemp("origins-gateway")
    gw = GatewayProcess(data_dir=d / "data", log_path=d / "gateway.log",
                        env={"CORECAST_ALLOWED_ORIGINS": "http://app.example,https://chat.example"})
    gw.start()
    yield gw
    gw.stop()


def test_allowed_origin_gets_cors_headers_with_credentials(origins_gw, make_group):
    gw = origins_gw
    gid, (u,) = make_group(gw, 1)
    c = PollingClient(gw.public, origin="https://chat.example")
    h = c.open_response.headers
    assert h["Access-Control-Allow-Origin"] == "https://chat.example", h
    assert h["Access-Control-Allow-Credentials"] == "true", h
    c.connect(gw.token(u))
    r = c.post_raw(b"3")
    assert r.headers["Access-Control-Allow-Origin"] == "https://chat.example", r.headers


def test_preflight_is_answered_for_an_allowed_origin(origins_gw):
    r = requests.options(url(origins_gw, transport="polling"), timeout=10, headers={
        "Origin": "http://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert r.status_code == 204, r.status_code
    h = r.headers
    assert h["Access-Control-Allow-Origin"] == "http://app.example", h
    assert h["Access-Control-Allow-Credentials"] == "true", h
    assert set(m.strip() for m in h["Access-Control-Allow-Methods"].split(",")) == {"GET", "POST"}, h
    assert h["Access-Control-Allow-Headers"] == "content-type", h


@pytest.mark.parametrize("method", ["GET", "OPTIONS"])
def test_foreign_origin_is_refused_on_polling(origins_gw, method):
    r = requests.request(method, url(origins_gw, transport="polling"), timeout=10,
                         headers={"Origin": "http://evil.example"})
    assert r.status_code == 403, r.status_code
    assert "Access-Control-Allow-Origin" not in r.headers


def test_foreign_origin_is_refused_on_websocket(origins_gw):
    with pytest.raises(Exception) as e:
        RawClient(origins_gw.public, header=["Origin: http://evil.example"])
    assert "403" in str(e.value), e.value


def test_clients_without_an_origin_are_accepted_on_both_transports(origins_gw, make_group, connect):
    """Native, mobile and server clients send no Origin: the allowlist protects browsers only."""
    gw = origins_gw
    gid, (u, v) = make_group(gw, 2)
    ws = RawClient(gw.public)  # websocket-client sends no Origin unless told
    assert ws.open["sid"]
    c = PollingClient(gw.public)
    c.connect(gw.token(u))
    official = connect(gw, v)  # python-socketio, default transports (polling, then upgrade)
    ack = official.call("sendMessage", {"groupId": gid, "text": "no origin", "attachments": []})
    assert ack["ok"] is True, ack
    assert c.wait_event("newMessage", lambda m: m["id"] == ack["id"])["text"] == "no origin"


# ----- transports setting and the official client --------------------------------------------------

def test_websocket_only_refuses_polling(start_gateway, connect, new_id):
    gw = start_gateway(CORECAST_TRANSPORTS="websocket")
    r = requests.get(url(gw, transport="polling"), timeout=10)
    assert eio_error(r) == (400, 0, "Transport unknown")
    u = new_id()
    gw.put_user(u)
    c = connect(gw, u, transports=["websocket"])
    assert c.sio.transport() == "websocket"


def test_polling_only_announces_no_upgrade_and_refuses_websocket(start_gateway, connect, new_id):
    gw = start_gateway(CORECAST_TRANSPORTS="polling")
    c = PollingClient(gw.public)
    assert c.open["upgrades"] == [], c.open
    with pytest.raises(Exception) as e:
        RawClient(gw.public)
    assert "400" in str(e.value), e.value
    u, v = new_id(), new_id()
    gid = new_id()
    for x in (u, v):
        gw.put_user(x)
    gw.put_group(gid, [u, v])
    a, b = connect(gw, u), connect(gw, v)
    ack = a.call("sendMessage", {"groupId": gid, "text": "polling only", "attachments": []})
    assert b.wait_for("newMessage", lambda m: m["id"] == ack["id"])["text"] == "polling only"
    assert a.sio.transport() == "polling"


def test_official_client_on_polling_only_through_the_chat_flow(gw, make_group, connect):
    gid, (u, v) = make_group(gw, 2)
    b = connect(gw, v)
    a = connect(gw, u, transports=["polling"])
    assert a.sio.transport() == "polling"
    b.wait_for("userOnline", lambda p: p == {"userId": u, "isOnline": True})
    ack = a.call("sendMessage", {"groupId": gid, "text": "hi from polling", "attachments": []})
    assert ack["ok"] is True, ack
    msg = b.wait_for("newMessage", lambda m: m["id"] == ack["id"])
    reply = b.call("sendMessage", {"groupId": gid, "text": "hi back", "attachments": []})
    a.wait_for("newMessage", lambda m: m["id"] == reply["id"])
    assert a.call("markAsRead", {"groupId": gid, "messageId": reply["id"]})["ok"] is True
    b.wait_for("messageRead", lambda p: p["messageId"] == reply["id"] and p["userId"] == u)
    assert a.call("leaveGroup", {"groupId": gid})["ok"] is True
    assert a.call("joinGroup", {"groupId": gid})["ok"] is True
    assert msg["senderId"] == u
    a.close()
    b.wait_for("userOnline", lambda p: p == {"userId": u, "isOnline": False})


def test_official_client_default_transports_upgrades(gw, make_group, connect):
    gid, (u,) = make_group(gw, 1)
    a = connect(gw, u)  # python-socketio defaults: polling first, then the upgrade
    ack = a.call("sendMessage", {"groupId": gid, "text": "default", "attachments": []})
    assert ack["ok"] is True, ack
    a.wait_for("newMessage", lambda m: m["id"] == ack["id"])
    assert a.sio.transport() == "websocket"
