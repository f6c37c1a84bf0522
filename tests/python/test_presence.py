"""Presence: `userOnline` to co-members on a user's first connection and after the last one
closes (tabs on different shards count together), never to the user's own connections, and
persisted presence on the admin API."""

import time

import pytest


@pytest.fixture
def gw(module_gateway):
    return module_gateway


def online(uid, is_online):
    return lambda p: p == {"userId": uid, "isOnline": is_online}


def presence_of(client, uid):
    return [p["isOnline"] for p in client.events("userOnline") if p.get("userId") == uid]


def wait_admin_user(gw, uid, predicate, timeout=10.0):
    """Polls GET /api/users/{uid} (bounded) until predicate(body) holds; returns the body."""
    deadline = time.monotonic() + timeout
    while True:
        r = gw.admin("GET", f"/api/users/{uid}")
        assert r.status_code == 200, (r.status_code, r.text)
        body = r.json()
        if predicate(body):
            return body
        assert time.monotonic() < deadline, f"user {uid} never matched; last {body}"
        time.sleep(0.05)


def test_first_connection_announces_online_to_co_members(gw, connect, make_group, new_id):
    gid, (a, b) = make_group(gw, 2)
    outsider = new_id()
    gw.put_user(outsider)
    cb = connect(gw, b)
    co = connect(gw, outsider)
    ca = connect(gw, a)
    cb.wait_for("userOnline", online(a, True))
    # Marker: a later co-member of both comes online; by then a's announcement, had it been
    # sent to them, would have arrived as well.
    _, (c,) = make_group(gw, 1, extra_members=[a, outsider])
    connect(gw, c)
    ca.wait_for("userOnline", online(c, True))
    co.wait_for("userOnline", online(c, True))
    assert presence_of(ca, a) == [], "a user's own connection got its own userOnline"
    assert presence_of(co, a) == [], "a non-member got userOnline"


def test_two_tabs_online_until_both_close(gw, connect, make_group):
    gid, (a, b) = make_group(gw, 2)
    cb = connect(gw, b)
    tabs = [connect(gw, a) for _ in range(3)]  # 4 shards: tabs spread over shards
    cb.wait_for("userOnline", online(a, True))
    tabs[0].close()
    tabs[1].close()
    # b must hear nothing yet; the marker is the final close, whose `false` must be the next one.
    tabs[2].close()
    cb.wait_for("userOnline", online(a, False))
    assert presence_of(cb, a) == [True, False], presence_of(cb, a)


def test_reconnect_after_offline_announces_online_again(gw, connect, make_group):
    gid, (a, b) = make_group(gw, 2)
    cb = connect(gw, b)
    ca = connect(gw, a)
    cb.wait_for("userOnline", online(a, True))
    ca.close()
    cb.wait_for("userOnline", online(a, False))
    connect(gw, a)
    cb.wait_for("userOnline", online(a, True))
    assert presence_of(cb, a) == [True, False, True]


def test_presence_is_persisted(gw, connect, make_group):
    gid, (a, b) = make_group(gw, 2)
    gw.put_user(a, f"a{a}@example.test", "Presence A")
    before = gw.admin("GET", f"/api/users/{a}").json()
    assert before["online"] is False, before
    cb = connect(gw, b)
    ca = connect(gw, a)
    cb.wait_for("userOnline", online(a, True))
    body = wait_admin_user(gw, a, lambda u: u["online"] is True)
    assert body["id"] == a and body["email"] == f"a{a}@example.test" and body["name"] == "Presence A"
    ca.close()
    cb.wait_for("userOnline", online(a, False))
    body = wait_admin_user(gw, a, lambda u: u["online"] is False and u.get("lastSeen"))
    assert set(body) >= {"id", "email", "name", "online", "lastSeen"}, body
    assert isinstance(body["lastSeen"], str) and body["lastSeen"].endswith("Z"), body
