"""A session lives as long as its token (issue 15, item 7): once the token's `exp` passes (with
the same 5 s leeway as at CONNECT) the gateway closes the session with a clear reason, unless
the client sent `refreshToken` with a new token for the same user first."""

import time

import pytest

LEEWAY_S = 5


@pytest.fixture
def gw(start_gateway):
    # Ticks a few times a second, so that the close follows the expiry closely.
    return start_gateway(CORECAST_PING_INTERVAL_MS=1000, CORECAST_PING_TIMEOUT_MS=2000)


def test_a_session_is_closed_when_its_token_expires(gw, raw, make_group):
    gid, (u,) = make_group(gw, 1)
    exp = int(time.time()) + 1
    c = raw(gw, token=gw.token(u, exp=exp))
    closed = c.wait_close(timeout=LEEWAY_S + 10)
    assert closed.code == 1008 and "token expired" in closed.reason, closed
    assert time.time() >= exp + LEEWAY_S - 1, "closed before the token (and its leeway) ran out"


def test_refresh_token_keeps_the_session_open(gw, raw, make_group):
    gid, (u, v) = make_group(gw, 2)
    exp = int(time.time()) + 1
    c = raw(gw, token=gw.token(u, exp=exp))
    ack = c.call("refreshToken", {"token": gw.token(u)}, ack_id=3)
    assert ack["ok"] is True and ack["exp"] > exp, ack
    # Someone else's token does not move this session's expiry, nor change its user.
    other = c.call("refreshToken", {"token": gw.token(v)}, ack_id=4)
    assert other["ok"] is False and other["error"]["code"] == "unauthenticated", other
    bad = c.call("refreshToken", {"token": "not-a-jwt"}, ack_id=5)
    assert bad["ok"] is False and bad["error"]["code"] == "unauthenticated", bad
    # Past the first token's expiry and leeway, the session still works.
    deadline = exp + LEEWAY_S + 2
    while time.time() < deadline:
        try:
            c.backlog.append(c.recv(0.2))
        except AssertionError:
            pass
        assert c.closed is None, c.closed
    sent = c.call("sendMessage", {"groupId": gid, "text": "still here", "attachments": []}, ack_id=6)
    assert sent["ok"] is True, sent
    msg = c.wait_event("newMessage", lambda m: m["id"] == sent["id"])
    assert msg["senderId"] == u
