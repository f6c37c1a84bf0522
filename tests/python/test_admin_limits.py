"""Bounds of the internal listener (docs/operations.md, "Internal listener"): idle connections
cost no thread and do not stop real calls, a connection over the cap gets 503, a request that
does not arrive within the deadline is cut with 408 however it drips, and a wrong token is
refused right after the request head, before any body is read."""

import os
import socket
import time

import pytest
import requests

TIMEOUT_MS = 1500  # CORECAST_ADMIN_REQUEST_TIMEOUT_MS in these tests
MAX_CONNS = 24     # CORECAST_ADMIN_MAX_CONNECTIONS
THREADS = 2        # CORECAST_ADMIN_THREADS

GATEWAY_ENV = {
    "CORECAST_ADMIN_REQUEST_TIMEOUT_MS": str(TIMEOUT_MS),
    "CORECAST_ADMIN_MAX_CONNECTIONS": str(MAX_CONNS),
    "CORECAST_ADMIN_THREADS": str(THREADS),
    "CORECAST_SHARDS": "2",
}


@pytest.fixture
def gw(start_gateway):
    return start_gateway(**GATEWAY_ENV)


def _addr(gw):
    host, port = gw.internal.rsplit(":", 1)
    return host, int(port)


def _open(gw, timeout=5.0):
    s = socket.create_connection(_addr(gw), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def _read_answer(s, timeout=5.0):
    """Everything the server sends until it closes (or `timeout`); b"" on a reset."""
    s.settimeout(timeout)
    out = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk
    except ConnectionResetError:
        return out


def _threads(gw):
    return len(os.listdir(f"/proc/{gw.proc.pid}/task"))


def _head(method, path, token=None, extra=""):
    auth = f"Authorization: Bearer {token}\r\n" if token is not None else ""
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}{extra}\r\n".encode()


def test_idle_connections_take_no_thread_and_real_calls_are_served(gw, new_id):
    before = _threads(gw)
    idle = [_open(gw) for _ in range(MAX_CONNS - 4)]
    try:
        # Each idle connection has started a request: half a head.
        for s in idle:
            s.sendall(b"GET /api/users/1 HTTP/1.1\r\nHost: x\r\n")
        uid = new_id()
        gw.put_user(uid)  # served while the idle ones wait
        assert gw.admin("GET", f"/api/users/{uid}").status_code == 200
        assert requests.get(f"http://{gw.internal}/healthz", timeout=5).status_code == 200
        assert _threads(gw) == before, "idle connections must not start threads"
    finally:
        for s in idle:
            s.close()


def test_a_connection_over_the_cap_gets_503_and_the_listener_recovers(gw, new_id):
    before = _threads(gw)
    held = [_open(gw) for _ in range(MAX_CONNS)]
    try:
        for s in held:
            s.sendall(b"GET /healthz HTTP/1.1\r\n")  # never finished
        # The reading thread counts a connection once it accepted it; a connection made
        # after the cap is full is answered at once (no request needed).
        extra = _open(gw)
        answer = _read_answer(extra)
        extra.close()
        assert answer.startswith(b"HTTP/1.1 503 "), answer
        assert b"Retry-After: 1" in answer and b"busy" in answer, answer
        assert _threads(gw) == before, "connections must not start threads"
    finally:
        for s in held:
            s.close()
    # Closed connections free their slots; real calls are served again.
    deadline = time.monotonic() + 5
    while True:
        try:
            r = requests.get(f"http://{gw.internal}/healthz", timeout=5)
            if r.status_code == 200:
                break
            assert r.status_code == 503, r.status_code
        except requests.ConnectionError:
            pass
        assert time.monotonic() < deadline, "the listener did not recover"
    uid = new_id()
    gw.put_user(uid)


def test_a_drip_is_cut_at_the_deadline(gw):
    # A head that never ends, far longer than the drip can send in time.
    request = b"GET /healthz HTTP/1.1\r\nX-Drip: " + b"a" * 2000
    s = _open(gw)
    start = time.monotonic()
    sent = 0
    answer = b""
    try:
        s.settimeout(0.05)
        for byte in request:
            try:
                s.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += 1
            try:  # the pause between drops is the behaviour under test, and waits for the answer
                chunk = s.recv(4096)
                answer += chunk
                if not chunk or answer.endswith(b"}"):
                    break
            except socket.timeout:
                pass
            assert time.monotonic() - start < TIMEOUT_MS / 1000 + 3, "not cut at the deadline"
        answer += _read_answer(s, timeout=3)
    finally:
        s.close()
    elapsed = time.monotonic() - start
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert TIMEOUT_MS / 1000 - 0.2 <= elapsed < TIMEOUT_MS / 1000 + 2, elapsed
    assert sent < len(request), "the drip was never cut"


def test_a_wrong_token_is_refused_before_the_body(gw):
    declared = 1_000_000
    for token, status in (("wrong", b"401"), (None, b"401")):
        s = _open(gw)
        try:
            s.sendall(_head("PUT", "/api/groups/1", token,
                            f"Content-Type: application/json\r\nContent-Length: {declared}\r\n"))
            # No body sent: the answer must come anyway, well before the request deadline.
            start = time.monotonic()
            answer = _read_answer(s, timeout=TIMEOUT_MS / 1000 / 2)
            assert answer.startswith(b"HTTP/1.1 " + status), (token, answer)
            assert time.monotonic() - start < TIMEOUT_MS / 1000 / 2
        finally:
            s.close()
    # With the right token the same head waits for its body (and is cut at the deadline).
    s = _open(gw)
    try:
        s.sendall(_head("PUT", "/api/groups/1", gw.admin_token, f"Content-Length: {declared}\r\n"))
        answer = _read_answer(s, timeout=TIMEOUT_MS / 1000 + 3)
        assert answer.startswith(b"HTTP/1.1 408 "), answer
    finally:
        s.close()


def test_a_client_that_sends_its_body_anyway_reads_the_401(gw):
    """The refused connection lingers, so a client writing its whole body before reading (as
    `requests` does) gets the answer, not a reset."""
    body = {"name": "g", "members": list(range(20_000))}  # about 120 KB of JSON
    r = gw.admin("PUT", "/api/groups/1", body, token="wrong-token")
    assert r.status_code == 401, r.text
    r = gw.admin("PUT", "/api/groups/1", {"name": "x" * (2 << 20), "members": []})
    assert r.status_code == 413, r.text


def test_expect_100_continue_only_after_the_token(gw, new_id):
    uid = new_id()
    body = b'{"email":"c@example.test","name":"C"}'
    s = _open(gw)
    try:
        s.sendall(_head("PUT", f"/api/users/{uid}", gw.admin_token,
                        f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n"))
        s.settimeout(5)
        interim = s.recv(4096)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), interim
        s.sendall(body)
        answer = _read_answer(s)
        assert answer.startswith(b"HTTP/1.1 200 "), answer
    finally:
        s.close()
    assert gw.admin("GET", f"/api/users/{uid}").json()["email"] == "c@example.test"
