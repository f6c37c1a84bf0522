"""Chat events with the official Python client: sendMessage, joinGroup, leaveGroup, markAsRead,
acks and error events, clientMsgId de-duplication, the per-user rate limit."""

import re
import uuid

import pytest

TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


@pytest.fixture
def gw(module_gateway):
    return module_gateway


def test_send_message_ack_and_broadcast_shape(gw, connect, make_group):
    gid, (a, b, c) = make_group(gw, 3)
    ca, cb, cc = connect(gw, a), connect(gw, b), connect(gw, c)  # no joinGroup: joined at connect
    attachments = [{"url": "https://cdn.example.test/a.png", "type": "image"},
                   {"url": "http://cdn.example.test/b.mp4", "type": "video"},
                   {"url": "https://cdn.example.test/c.ogg", "type": "audio"},
                   {"url": "https://cdn.example.test/d.pdf", "type": "file"}]
    ack = ca.call("sendMessage", {"groupId": gid, "text": "héllo 👋", "attachments": attachments})
    assert ack["ok"] is True, ack
    assert isinstance(ack["id"], str) and ack["id"].isdigit(), ack
    assert TS_RE.match(ack["timestamp"]), ack
    want = {"id": ack["id"], "senderId": a, "groupId": gid, "text": "héllo 👋",
            "attachments": attachments, "timestamp": ack["timestamp"], "readBy": [a]}
    for client in (ca, cb, cc):  # the sender's own connection included
        assert client.wait_for("newMessage", lambda m: m["id"] == ack["id"]) == want


def test_emit_without_ack_is_broadcast(gw, connect, make_group):
    gid, (a, b) = make_group(gw, 2)
    ca, cb = connect(gw, a), connect(gw, b)
    ca.emit("sendMessage", {"groupId": gid, "text": "no ack wanted", "attachments": []})
    msg = cb.wait_for("newMessage", lambda m: m["text"] == "no ack wanted")
    assert msg["senderId"] == a and msg["groupId"] == gid
    assert ca.events("error") == []


def test_every_connection_of_a_user_receives(gw, connect, make_group):
    gid, (a, b) = make_group(gw, 2)
    b1, b2, b3 = connect(gw, b), connect(gw, b), connect(gw, b)
    ack = connect(gw, a).send_message(gid, "to all tabs")
    for c in (b1, b2, b3):
        c.wait_for("newMessage", lambda m: m["id"] == ack["id"])


def test_message_ids_increase(gw, connect, make_group):
    gid, (a,) = make_group(gw, 1)
    ca = connect(gw, a)
    ids = [int(ca.send_message(gid, f"m{i}")["id"]) for i in range(5)]
    assert ids == sorted(ids) and len(set(ids)) == 5, ids


def test_join_group_member_ok(gw, connect, make_group):
    gid, (a,) = make_group(gw, 1)
    assert connect(gw, a).call("joinGroup", {"groupId": gid}) == {"ok": True, "groupId": gid}


def test_join_group_not_member(gw, connect, make_group, new_id):
    gid, _ = make_group(gw, 1)
    outsider = new_id()
    gw.put_user(outsider)
    co = connect(gw, outsider)
    ack = co.call("joinGroup", {"groupId": gid})
    assert ack["ok"] is False and ack["error"]["code"] == "not_member" and ack["error"]["message"], ack
    co.emit("joinGroup", {"groupId": gid})
    err = co.wait_for("error")
    assert err["code"] == "not_member" and err["message"], err


def test_send_not_member_ack_and_error_event(gw, connect, make_group, new_id):
    gid, (a,) = make_group(gw, 1)
    outsider = new_id()
    gw.put_user(outsider)
    ca, co = connect(gw, a), connect(gw, outsider)
    ack = co.call("sendMessage", {"groupId": gid, "text": "let me in", "attachments": []})
    assert ack["ok"] is False and ack["error"]["code"] == "not_member", ack
    co.emit("sendMessage", {"groupId": gid, "text": "let me in", "attachments": []})
    assert co.wait_for("error")["code"] == "not_member"
    marker = ca.send_message(gid, "marker")
    ca.wait_for("newMessage", lambda m: m["id"] == marker["id"])
    assert [m["text"] for m in ca.events("newMessage")] == ["marker"]
    assert [m["text"] for m in gw.history(gid)] == ["marker"]


def test_leave_group_stops_delivery_to_that_connection(gw, connect, make_group):
    gid, (a, b) = make_group(gw, 2)
    ca, b_left, b_stays = connect(gw, a), connect(gw, b), connect(gw, b)
    assert b_left.call("leaveGroup", {"groupId": gid}) == {"ok": True, "groupId": gid}
    m1 = ca.send_message(gid, "while away")
    b_stays.wait_for("newMessage", lambda m: m["id"] == m1["id"])  # only that connection left
    # Marker: join again, then a later message of the same group must arrive, after m1 would have.
    assert b_left.call("joinGroup", {"groupId": gid}) == {"ok": True, "groupId": gid}
    m2 = ca.send_message(gid, "back again")
    b_left.wait_for("newMessage", lambda m: m["id"] == m2["id"])
    assert [m["id"] for m in b_left.events("newMessage")] == [m2["id"]]


def test_mark_as_read_broadcasts_and_persists(gw, connect, make_group):
    gid, (a, b) = make_group(gw, 2)
    ca, cb = connect(gw, a), connect(gw, b)
    msg = ca.send_message(gid, "read me")
    assert cb.call("markAsRead", {"messageId": msg["id"], "groupId": gid}) == {"ok": True}
    want = {"messageId": msg["id"], "userId": b, "groupId": gid}
    for c in (ca, cb):
        assert c.wait_for("messageRead", lambda r: r["messageId"] == msg["id"]) == want
    stored = [m for m in gw.history(gid) if m["id"] == msg["id"]]
    assert stored and b in stored[0]["readBy"], stored


def test_mark_as_read_unknown_message_not_found(gw, connect, make_group):
    gid, (a,) = make_group(gw, 1)
    ca = connect(gw, a)
    ack = ca.call("markAsRead", {"messageId": "999999999999", "groupId": gid})
    assert ack["ok"] is False and ack["error"]["code"] == "not_found", ack
    ca.emit("markAsRead", {"messageId": "999999999998", "groupId": gid})
    assert ca.wait_for("error")["code"] == "not_found"


def test_mark_as_read_message_of_another_group_not_found(gw, connect, make_group):
    g1, (a,) = make_group(gw, 1)
    g2, _ = make_group(gw, 0, extra_members=[a])
    ca = connect(gw, a)
    msg = ca.send_message(g1, "in g1")
    ack = ca.call("markAsRead", {"messageId": msg["id"], "groupId": g2})
    assert ack["ok"] is False and ack["error"]["code"] == "not_found", ack


def test_mark_as_read_not_member(gw, connect, make_group, new_id):
    gid, (a,) = make_group(gw, 1)
    outsider = new_id()
    gw.put_user(outsider)
    msg = connect(gw, a).send_message(gid, "private")
    ack = connect(gw, outsider).call("markAsRead", {"messageId": msg["id"], "groupId": gid})
    assert ack["ok"] is False and ack["error"]["code"] == "not_member", ack


def test_client_msg_id_resend_gets_original_ack_once(gw, connect, make_group):
    gid, (a, b) = make_group(gw, 2)
    ca, cb = connect(gw, a), connect(gw, b)
    cmid = str(uuid.uuid4())
    first = ca.send_message(gid, "once", clientMsgId=cmid)
    again = ca.send_message(gid, "once", clientMsgId=cmid)
    assert (again["id"], again["timestamp"]) == (first["id"], first["timestamp"])
    marker = ca.send_message(gid, "marker")
    cb.wait_for("newMessage", lambda m: m["id"] == marker["id"])
    assert [m["id"] for m in cb.events("newMessage")] == [first["id"], marker["id"]]
    assert [m["id"] for m in gw.history(gid)] == [marker["id"], first["id"]]


def test_client_msg_id_resend_after_reconnect(gw, connect, make_group):
    gid, (a, b) = make_group(gw, 2)
    cb = connect(gw, b)
    cmid = str(uuid.uuid4())
    ca = connect(gw, a)
    first = ca.send_message(gid, "retry me", clientMsgId=cmid)
    ca.close()
    ca2 = connect(gw, a)
    again = ca2.send_message(gid, "retry me", clientMsgId=cmid)
    assert (again["id"], again["timestamp"]) == (first["id"], first["timestamp"])
    marker = ca2.send_message(gid, "marker")
    cb.wait_for("newMessage", lambda m: m["id"] == marker["id"])
    assert [m["id"] for m in cb.events("newMessage")] == [first["id"], marker["id"]]
    assert len(gw.history(gid)) == 2


def test_client_msg_id_is_scoped_to_user_and_group(gw, connect, make_group):
    g1, (a, b) = make_group(gw, 2)
    g2, _ = make_group(gw, 0, extra_members=[a, b])
    ca, cb = connect(gw, a), connect(gw, b)
    cmid = "same-client-id"
    m_a1 = ca.send_message(g1, "a in g1", clientMsgId=cmid)
    m_a2 = ca.send_message(g2, "a in g2", clientMsgId=cmid)
    m_b1 = cb.send_message(g1, "b in g1", clientMsgId=cmid)
    assert len({m_a1["id"], m_a2["id"], m_b1["id"]}) == 3
    assert {m["text"] for m in gw.history(g1)} == {"a in g1", "b in g1"}


def test_rate_limit(start_gateway, connect, make_group):
    gw = start_gateway(CORECAST_RATE_LIMIT_PER_MIN=3)
    gid, (a, b) = make_group(gw, 2)
    ca, cb = connect(gw, a), connect(gw, b)
    for i in range(3):
        ca.send_message(gid, f"ok {i}")
    ack = ca.call("sendMessage", {"groupId": gid, "text": "one too many", "attachments": []})
    assert ack["ok"] is False and ack["error"]["code"] == "rate_limited" and ack["error"]["message"], ack
    ca.emit("sendMessage", {"groupId": gid, "text": "still too many", "attachments": []})
    assert ca.wait_for("error")["code"] == "rate_limited"
    # Per user: the other member is not limited; a second connection of `a` is.
    marker = cb.send_message(gid, "b is fine")
    ca.wait_for("newMessage", lambda m: m["id"] == marker["id"])
    texts = [m["text"] for m in gw.history(gid)]
    assert texts == ["b is fine", "ok 2", "ok 1", "ok 0"], texts


def test_rate_limit_counts_all_connections_of_a_user(start_gateway, connect, make_group):
    """The limit is per user: more tabs (which land on other shards) do not add quota."""
    gw = start_gateway(CORECAST_RATE_LIMIT_PER_MIN=3)
    gid, (a,) = make_group(gw, 1)
    tabs = [connect(gw, a) for _ in range(6)]  # 4 shards: several tabs sit on other shards
    for i in range(3):
        tabs[0].send_message(gid, f"ok {i}")
    acks = [t.call("sendMessage", {"groupId": gid, "text": f"tab {i}", "attachments": []})
            for i, t in enumerate(tabs)]
    accepted = [i for i, ack in enumerate(acks) if ack.get("ok")]
    assert accepted == [], f"tabs {accepted} could still send after the user's 3 per minute: {acks}"
    assert len(gw.history(gid)) == 3
