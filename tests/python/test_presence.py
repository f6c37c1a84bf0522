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


# ----- debounce (issue 15, item 6): the gateway's default window, CORECAST_PRESENCE_DEBOUNCE_MS

DEBOUNCE_S = 1.5


def iso_s(ts: str) -> float:
    from datetime import datetime
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def flap(gw, connect, uid, times, gap_s=0.2):
    """Connects and disconnects `uid` `times` times, `gap_s` apart (well inside the window);
    returns the wall-clock time of the last disconnect."""
    left = None
    for _ in range(times):
        c = connect(gw, uid)
        time.sleep(gap_s)  # the scenario's pacing, not a wait for an event
        c.close()
        left = time.time()
    return left


def test_a_flapping_user_is_one_online_offline_pair_and_ends_offline(gw, connect, make_group):
    gid, (a, b, marker) = make_group(gw, 3)
    cb = connect(gw, b)
    t_first = time.time()
    left = flap(gw, connect, a, 6)
    t_last_close = time.monotonic()
    cb.wait_for("userOnline", online(a, True))
    cb.wait_for("userOnline", online(a, False), timeout=DEBOUNCE_S + 5)
    waited = time.monotonic() - t_last_close
    assert waited >= DEBOUNCE_S - 0.2, f"offline announced {waited:.2f} s after leaving"
    # Marker: a later co-member's online; by then any further news of a would have come.
    connect(gw, marker)
    cb.wait_for("userOnline", online(marker, True))
    assert presence_of(cb, a) == [True, False], presence_of(cb, a)
    # The store follows the debounced state: offline, last seen when they really left.
    body = wait_admin_user(gw, a, lambda u: u["online"] is False and u.get("lastSeen"))
    seen = iso_s(body["lastSeen"])
    assert left - 0.5 <= seen <= left + 0.5, (seen, left, t_first)


def test_a_flapping_user_who_comes_back_stays_online(gw, connect, make_group):
    gid, (a, b, marker) = make_group(gw, 3)
    cb = connect(gw, b)
    cm = connect(gw, marker)
    t_first = time.time()
    flap(gw, connect, a, 5)
    ca = connect(gw, a)  # and stays
    t_back = time.time()
    cb.wait_for("userOnline", online(a, True))
    # Marker: the marker user leaves now; its offline comes one window later, after any
    # offline of a's (whose last close was earlier) would have.
    cm.close()
    cb.wait_for("userOnline", online(marker, False), timeout=DEBOUNCE_S + 5)
    cb.assert_no_event("userOnline", online(a, False), within=0.5)
    assert presence_of(cb, a) == [True], presence_of(cb, a)
    # Stored: online, as of the first connection (no write per flap).
    body = wait_admin_user(gw, a, lambda u: u["online"] is True)
    seen = iso_s(body["lastSeen"])
    assert seen <= t_first + 0.5 < t_back - 0.5, (seen, t_first, t_back)
    assert ca.call("joinGroup", {"groupId": gid}) == {"ok": True, "groupId": gid}
