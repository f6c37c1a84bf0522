"""Room pacing: frames of large rooms gather for a short window and go out several per send.
The threshold is lowered here so that a small room is paced; what a member notices must not
change: every message arrives, once, in order, and a message after a quiet spell is not held
back for a window."""

import time

import pytest

from test_ordering import flood, received_ids

WINDOW_MS = 1000
GATEWAY_ENV = {"CORECAST_SHARDS": 1, "CORECAST_PACED_ROOM_MEMBERS": 3,
               "CORECAST_PACING_WINDOW_MS": WINDOW_MS}


@pytest.fixture
def gw(module_gateway):
    return module_gateway


def test_paced_room_delivers_everything_in_order(gw, connect, make_group):
    gid, users = make_group(gw, 6)
    senders = [connect(gw, u) for u in users[:3]]
    receivers = [connect(gw, u) for u in users[3:]]
    per_sender = 20
    acks = flood(senders, gid, per_sender)
    total = len(senders) * per_sender
    acked = sorted(a["id"] for a in acks)
    for c in receivers + senders:
        ids = received_ids(c, gid, total)
        assert len(ids) == total, "a member missed or repeated a message"
        assert sorted(ids, key=int) == sorted(acked, key=int)
        assert ids == sorted(ids, key=int), "out of order"


def test_first_message_after_a_quiet_spell_is_not_held_back(gw, connect, make_group):
    gid, users = make_group(gw, 4)
    sender, *receivers = [connect(gw, u) for u in users]
    for round_ in range(2):
        # A window opened by an earlier round has ended by now: at most two windows after the
        # last frame (the window is extended once when frames were waiting).
        time.sleep(3 * WINDOW_MS / 1000)
        started = time.monotonic()
        ack = sender.call("sendMessage", {"groupId": gid, "text": f"r{round_}", "attachments": []})
        assert ack.get("ok"), ack
        for c in receivers:
            c.wait_for("newMessage", lambda m: m["text"] == f"r{round_}", timeout=10)
        elapsed_ms = (time.monotonic() - started) * 1000
        assert elapsed_ms < WINDOW_MS, (
            f"round {round_}: {elapsed_ms:.0f} ms: the first message waited for a window")


def test_paced_room_presence_arrives_once_for_each_member(gw, connect, make_group):
    """`userOnline` to a paced room waits for the window like a message does: each member
    still hears of every member who came online after it, exactly once, and nothing of itself.
    A message sent afterwards is the marker: it leaves each connection's queue after any
    presence frame queued before it."""
    gid, users = make_group(gw, 5)
    clients = [connect(gw, u) for u in users]
    for i, c in enumerate(clients):
        for later in users[i + 1:]:
            c.wait_for("userOnline", lambda p, u=later: p.get("userId") == u and p["isOnline"],
                       timeout=10)
    ack = clients[0].call("sendMessage", {"groupId": gid, "text": "marker", "attachments": []})
    assert ack.get("ok"), ack
    for i, c in enumerate(clients):
        c.wait_for("newMessage", lambda m: m["text"] == "marker", timeout=10)
        heard = sorted(p["userId"] for p in c.events("userOnline") if p["isOnline"])
        assert heard == sorted(users[i + 1:]), (
            f"member {i} heard userOnline for {heard}, expected {sorted(users[i + 1:])}")
