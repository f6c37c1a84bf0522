"""State a logged-in client can make the gateway hold, and work it can make it do (issue 15,
item 3): every client event is rate-limited per connection (`rate_limited`, and the session
goes on), rooms exist only for groups that exist, and idle rooms are forgotten.

Observed as an operator would: the answers a client gets, `corecast_rooms` (rooms per owner
shard) and `corecast_resident_memory_bytes` on /metrics.
"""

import re
import threading
import time

import pytest


def metrics(gw) -> str:
    r = gw.admin("GET", "/metrics")
    assert r.status_code == 200, r.text
    return r.text


def metric_total(text: str, name: str) -> float:
    pat = re.compile(r"^" + re.escape(name) + r"(\{[^}]*\})?\s+([0-9.eE+-]+)$", re.M)
    found = pat.findall(text)
    assert found, f"metric {name} missing"
    return sum(float(v) for _, v in found)


def rooms(gw) -> int:
    return int(metric_total(metrics(gw), "corecast_rooms"))


def rate_limited_errors(gw) -> int:
    m = re.search(r'^corecast_errors_total\{code="rate_limited"\}\s+(\d+)$', metrics(gw), re.M)
    assert m, "corecast_errors_total{code=\"rate_limited\"} missing"
    return int(m.group(1))


def wait_until(what, predicate, timeout=15.0):
    """Polls `predicate()` (bounded) until it returns a true value, which it returns."""
    deadline = time.monotonic() + timeout
    while True:
        v = predicate()
        if v:
            return v
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.05)


def emit_all(client, events, timeout=60.0):
    """Emits every (event, data) at once, each asking for an ack, without waiting in between;
    returns the acks in the order sent."""
    answers = [None] * len(events)
    left = [len(events)]
    done = threading.Event()
    lock = threading.Lock()

    def on_ack(i):
        def cb(*args):
            answers[i] = args[0] if args else None
            with lock:
                left[0] -= 1
                if left[0] == 0:
                    done.set()
        return cb

    for i, (event, data) in enumerate(events):
        client.sio.emit(event, data, callback=on_ack(i))
    assert done.wait(timeout), f"{left[0]} of {len(events)} acks missing after {timeout} s"
    return answers


def code(answer):
    return None if answer.get("ok") else answer["error"]["code"]


def test_every_event_is_rate_limited_per_connection_and_the_session_goes_on(
        start_gateway, connect, make_group):
    # The gateway's own default (20 a second, bursts of 40), not the test default (off).
    gw = start_gateway(CORECAST_EVENT_RATE_PER_SEC=None, CORECAST_EVENT_BURST=None)
    gid, (a, b) = make_group(gw, 2)
    ca, cb = connect(gw, a), connect(gw, b)
    before = rate_limited_errors(gw)

    kinds = [("joinGroup", {"groupId": gid}), ("leaveGroup", {"groupId": gid}),
             ("markAsRead", {"groupId": gid, "messageId": "1"}),
             ("sendMessage", {"groupId": gid, "text": "flood", "attachments": []}),
             ("getMessages", {"groupId": gid, "limit": 1}), ("getOnline", {"groupId": gid})]
    flood = [kinds[i % len(kinds)] for i in range(400)]
    t0 = time.monotonic()
    answers = emit_all(ca, flood)
    elapsed = time.monotonic() - t0
    limited = [code(x) == "rate_limited" for x in answers]
    admitted = limited.count(False)
    # The burst, plus what refilled while the flood went on, and nothing more.
    assert 40 <= admitted <= 40 + 20 * elapsed + 5, (admitted, elapsed)
    for name, _ in kinds:
        assert any(lim for (n, _), lim in zip(flood, limited) if n == name), \
            f"{name} was never rate-limited"
    for x in answers:
        if code(x) == "rate_limited":
            assert "retry in" in x["error"]["message"], x
    assert rate_limited_errors(gw) >= before + limited.count(True)

    # Without an ack, the answer is an `error` event.
    for _ in range(60):
        ca.emit("joinGroup", {"groupId": gid})
    err = ca.wait_for("error", lambda e: e.get("code") == "rate_limited")
    assert "too many events" in err["message"], err

    # The session goes on: once the budget refills (one event every 50 ms), events are served
    # again on the same connection, and messages still flow both ways.
    ack = wait_until("a joinGroup admitted again",
                     lambda: (lambda x: x if x.get("ok") else None)(
                         ca.call("joinGroup", {"groupId": gid})),
                     timeout=10)
    assert ack == {"ok": True, "groupId": gid}, ack
    sent = wait_until("a sendMessage admitted again",
                      lambda: (lambda x: x if x.get("ok") else None)(
                          ca.call("sendMessage",
                                  {"groupId": gid, "text": "still here", "attachments": []})),
                      timeout=10)
    cb.wait_for("newMessage", lambda m: m["id"] == sent["id"] and m["text"] == "still here")
    # The other connection has a budget of its own.
    reply = cb.call("sendMessage", {"groupId": gid, "text": "b too", "attachments": []})
    assert reply.get("ok"), reply
    ca.wait_for("newMessage", lambda m: m["id"] == reply["id"])


def test_unknown_groups_leave_no_room_and_no_memory(start_gateway, connect, make_group):
    # The limit off, so one client sends as many as it can: rooms must stay bounded anyway.
    gw = start_gateway(CORECAST_SHARDS=2)
    gid, (a,) = make_group(gw, 1)
    ca = connect(gw, a)
    assert rooms(gw) == 1, "the user's own group"

    def flood(prefix, n, kinds=("joinGroup", "markAsRead", "sendMessage")):
        events = []
        for i in range(n):
            g = f"{prefix}-{i}"
            kind = kinds[i % len(kinds)]
            data = {"joinGroup": {"groupId": g},
                    "markAsRead": {"groupId": g, "messageId": "1"},
                    "sendMessage": {"groupId": g, "text": "x", "attachments": []}}[kind]
            events.append((kind, data))
        answers = emit_all(ca, events, timeout=120)
        assert all(code(x) == "not_member" for x in answers), \
            [x for x in answers if code(x) != "not_member"][:3]

    flood("warm", 2_000)  # allocator and caches settle
    rss0 = metric_total(metrics(gw), "corecast_resident_memory_bytes")
    flood("nope", 10_000, kinds=("joinGroup",))
    rss1 = metric_total(metrics(gw), "corecast_resident_memory_bytes")
    assert rooms(gw) == 1, "a room was left behind for a group that does not exist"
    # The same unknown ids again, in every kind of event (the negative cache answers most).
    flood("nope", 10_000)
    rss2 = metric_total(metrics(gw), "corecast_resident_memory_bytes")
    assert rooms(gw) == 1, "a room was left behind for a group that does not exist"
    assert rss1 - rss0 < 16 << 20, (rss0, rss1)
    assert rss2 - rss0 < 16 << 20, (rss0, rss2)

    # A group created after it was refused is served at once (the admin API clears it).
    gw.put_group("nope-7", [a])
    ack = ca.call("joinGroup", {"groupId": "nope-7"})
    assert ack == {"ok": True, "groupId": "nope-7"}, ack
    sent = ca.call("sendMessage", {"groupId": "nope-7", "text": "now it exists",
                                   "attachments": []})
    assert sent.get("ok"), sent
    ca.wait_for("newMessage", lambda m: m["id"] == sent["id"])


def test_idle_rooms_are_forgotten_and_come_back_when_used(start_gateway, connect, make_group):
    gw = start_gateway(CORECAST_IDLE_ROOM_SECS=1, CORECAST_SHARDS=2)
    quiet, (a,) = make_group(gw, 1)
    busy, (b, c) = make_group(gw, 2)
    ca = connect(gw, a)
    cb, cc = connect(gw, b), connect(gw, c)
    assert rooms(gw) == 2
    ca.close()
    # The quiet group's room goes; the busy one (two subscribers) stays.
    wait_until("the idle room forgotten", lambda: rooms(gw) == 1)
    sent = cc.call("sendMessage", {"groupId": busy, "text": "still served", "attachments": []})
    assert sent.get("ok"), sent
    cb.wait_for("newMessage", lambda m: m["id"] == sent["id"])
    # A forgotten room loads again when used.
    ca = connect(gw, a)
    assert rooms(gw) == 2
    sent = ca.call("sendMessage", {"groupId": quiet, "text": "back", "attachments": []})
    assert sent.get("ok"), sent
    ca.wait_for("newMessage", lambda m: m["id"] == sent["id"] and m["text"] == "back")
    ca.close()
    cb.close()
    cc.close()
    wait_until("every room forgotten", lambda: rooms(gw) == 0)
