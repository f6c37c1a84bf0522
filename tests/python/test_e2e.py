"""End-to-end checks with the official Python Socket.IO client against the gateway binary."""

import base64
import os
import socket
from datetime import datetime, timedelta

import pytest


def _parse_utc(ts: str) -> datetime:
    dt = datetime.fromisoformat(ts)  # ISO 8601; Python 3.11 accepts a trailing Z
    assert dt.utcoffset() == timedelta(0), f"timestamp {ts!r} is not UTC"
    return dt


def test_group_message_reaches_other_member(gateway, connect):
    gateway.put_user(1, "alice@example.test", "Alice")
    gateway.put_user(2, "bob@example.test", "Bob")
    gateway.put_group(10, [1, 2], "general")
    alice = connect(gateway, 1)
    bob = connect(gateway, 2)
    # Joining explicitly (acked) means the message below cannot race the subscription.
    for c in (alice, bob):
        joined = c.call("joinGroup", {"groupId": 10})
        assert joined.get("ok") is True, joined

    ack = alice.call("sendMessage", {"groupId": 10, "text": "hi", "attachments": []})
    assert ack.get("ok") is True, ack
    assert ack.get("id"), ack
    _parse_utc(ack["timestamp"])

    msg = bob.wait_for("newMessage", lambda m: m.get("id") == ack["id"])
    assert msg["senderId"] == 1
    assert msg["groupId"] == "10"  # group ids are strings; the number 10 names the group "10"
    assert msg["text"] == "hi"
    assert msg["attachments"] == []
    assert msg["readBy"] == [1]  # the sender has read it
    assert msg["timestamp"] == ack["timestamp"]
    _parse_utc(msg["timestamp"])

    # The sender's own connection gets the broadcast too, and history has it, newest first.
    alice.wait_for("newMessage", lambda m: m.get("id") == ack["id"])
    history = gateway.history(10, limit=50)
    assert history and history[0]["id"] == ack["id"] and history[0]["text"] == "hi"


def test_bad_token_is_refused_with_connect_error(gateway, connect):
    client = connect(gateway, token="not-a-jwt", expect_failure=True)
    err = client.connect_error
    message = err.get("message", "") if isinstance(err, dict) else str(err)
    assert "token" in message.lower(), f"connect_error should mention the token: {err!r}"


def test_token_signed_with_another_secret_is_refused(gateway, connect):
    import jwt
    forged = jwt.encode({"sub": 1, "exp": 2**31 - 1}, "some-other-secret-0123456789abcdef0123", "HS256")
    client = connect(gateway, token=forged, expect_failure=True)
    assert client.connect_error is not None


def _upgrade_status(public: str, origin: str) -> str:
    """Sends a raw WebSocket upgrade request and returns the HTTP status line."""
    host, port = public.rsplit(":", 1)
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
        f"Host: {public}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        f"Origin: {origin}\r\n"
        "\r\n")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(request.encode())
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.split(b"\r\n", 1)[0].decode(errors="replace")


def test_foreign_origin_is_refused_before_upgrade(start_gateway):
    gw = start_gateway(CORECAST_ALLOWED_ORIGINS="http://good.example")
    status = _upgrade_status(gw.public, "http://evil.example")
    assert status.split()[1:2] == ["403"], f"foreign origin got {status!r}, want 403"
    # Control: the allowed origin is upgraded, so the 403 above is about the origin.
    status = _upgrade_status(gw.public, "http://good.example")
    assert status.split()[1:2] == ["101"], f"allowed origin got {status!r}, want 101"


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_internal_endpoints_answer(gateway, path):
    r = gateway.admin("GET", path)
    assert r.status_code == 200, f"{path} -> {r.status_code}: {r.text[:200]}"


def test_admin_api_requires_token(gateway):
    r = gateway.admin("PUT", "/api/users/1", {"email": "a@example.test", "name": "A"},
                      token="wrong")
    assert r.status_code in (401, 403), r.status_code
