"""History and presence over the socket, with the official Python client: `getMessages`
(members only, newest first, pages by message id) and `getOnline` (the members connected now)."""

import pytest


@pytest.fixture
def gw(module_gateway):
    return module_gateway


def test_get_messages_pages_newest_first_with_the_broadcast_shape(gw, connect, make_group):
    gid, (a, b) = make_group(gw, 2)
    ca, cb = connect(gw, a), connect(gw, b)
    acks = [ca.send_message(gid, f"m{i}") for i in range(7)]
    broadcast = {m["id"]: m for m in (cb.wait_for("newMessage", lambda m, i=ack["id"]: m["id"] == i)
                                      for ack in acks)}
    newest_first = [ack["id"] for ack in reversed(acks)]

    page = cb.call("getMessages", {"groupId": gid, "limit": 3})
    assert page["ok"] is True and page["hasMore"] is True, page
    assert [m["id"] for m in page["messages"]] == newest_first[:3]
    assert page["messages"] == [broadcast[i] for i in newest_first[:3]], "as newMessage sent them"

    page = cb.call("getMessages", {"groupId": gid, "limit": 3, "before": newest_first[2]})
    assert [m["id"] for m in page["messages"]] == newest_first[3:6] and page["hasMore"] is True
    page = cb.call("getMessages", {"groupId": gid, "limit": 3, "before": newest_first[5]})
    assert [m["id"] for m in page["messages"]] == newest_first[6:] and page["hasMore"] is False

    everything = cb.call("getMessages", {"groupId": gid})  # 50 by default
    assert [m["id"] for m in everything["messages"]] == newest_first
    assert everything["hasMore"] is False


def test_get_messages_shows_who_read_what(gw, connect, make_group):
    gid, (a, b) = make_group(gw, 2)
    ca, cb = connect(gw, a), connect(gw, b)
    msg = ca.send_message(gid, "read me")
    assert cb.call("markAsRead", {"groupId": gid, "messageId": msg["id"]}) == {"ok": True}
    page = ca.call("getMessages", {"groupId": gid, "limit": 1})
    assert sorted(page["messages"][0]["readBy"]) == sorted([a, b]), page


def test_history_and_presence_are_for_members_only(gw, connect, make_group):
    gid, (a,) = make_group(gw, 1)
    other, (b,) = make_group(gw, 1)
    cb = connect(gw, b)
    for event in ("getMessages", "getOnline"):
        ack = cb.call(event, {"groupId": gid})
        assert ack["ok"] is False and ack["error"]["code"] == "not_member", (event, ack)
        ack = cb.call(event, {"groupId": "no-such-group-" + other})
        assert ack["ok"] is False and ack["error"]["code"] == "not_member", (event, ack)
    # Without an ack, the refusal is an `error` event.
    cb.emit("getMessages", {"groupId": gid})
    assert cb.wait_for("error")["code"] == "not_member"


@pytest.mark.parametrize("payload, says", [
    ({"limit": 0}, "limit"), ({"limit": 101}, "limit"), ({"limit": "ten"}, "limit"),
    ({"before": "not-an-id"}, "before"), ({"before": -1}, "before"),
])
def test_get_messages_refuses_a_bad_page(gw, connect, make_group, payload, says):
    gid, (a,) = make_group(gw, 1)
    ack = connect(gw, a).call("getMessages", {"groupId": gid, **payload})
    assert ack["ok"] is False and ack["error"]["code"] == "invalid_payload", ack
    assert says in ack["error"]["message"], ack


def test_get_online_lists_the_members_connected_now(gw, connect, make_group):
    gid, (a, b, c) = make_group(gw, 3)
    ca = connect(gw, a)
    cb1, cb2 = connect(gw, b), connect(gw, b)  # two tabs of b
    ca.wait_for("userOnline", lambda e: e == {"userId": b, "isOnline": True})
    assert ca.call("getOnline", {"groupId": gid}) == {
        "ok": True, "groupId": gid, "online": sorted([a, b])}, "c never connected"
    cb1.close()
    assert ca.call("getOnline", {"groupId": gid})["online"] == sorted([a, b]), "b's phone is on"
    cb2.close()
    # Once a hears that b went offline, asking agrees.
    ca.wait_for("userOnline", lambda e: e == {"userId": b, "isOnline": False})
    assert ca.call("getOnline", {"groupId": gid})["online"] == [a]
