"""Group ids are strings (issue 13, item 6), as the chat app's Socket.IO room names are: unicode,
spaces and digits are echoed exactly as the group was created, in events, acks, history and the
admin API; a number in input names the group of its decimal string; anything else that is not
1 to 128 bytes of UTF-8 without control characters gets invalid_payload. The admin API takes
the id as a percent-encoded path segment."""

import json

import pytest

from gateway_process import group_path


@pytest.fixture
def gw(module_gateway):
    return module_gateway


def members(gw, new_id, n):
    uids = [new_id() for _ in range(n)]
    for u in uids:
        gw.put_user(u)
    return uids


def chat_flow(gw, connect, gid, a, b, sent_as=None):
    """a and b (members of `gid`) join, a sends, b marks it read: every output names `gid`.
    `sent_as` is what the clients put in `groupId` (default: `gid` itself)."""
    wire = gid if sent_as is None else sent_as
    ca, cb = connect(gw, a), connect(gw, b)
    for c in (ca, cb):
        assert c.call("joinGroup", {"groupId": wire}) == {"ok": True, "groupId": gid}
    ack = ca.call("sendMessage", {"groupId": wire, "text": f"hello {gid}", "attachments": []})
    assert ack["ok"] is True, ack
    for c in (ca, cb):
        msg = c.wait_for("newMessage", lambda m: m["id"] == ack["id"])
        assert msg["groupId"] == gid and msg["readBy"] == [a], msg
    assert cb.call("markAsRead", {"messageId": ack["id"], "groupId": wire}) == {"ok": True}
    for c in (ca, cb):
        read = c.wait_for("messageRead", lambda r: r["messageId"] == ack["id"])
        assert read == {"messageId": ack["id"], "userId": b, "groupId": gid}, read
    history = gw.history(gid)
    assert [(m["id"], m["groupId"], m["readBy"]) for m in history] == [(ack["id"], gid, [a, b])]
    assert cb.call("leaveGroup", {"groupId": wire}) == {"ok": True, "groupId": gid}
    return ack


@pytest.mark.parametrize("gid", [
    "team-berlin",
    "team berlin",
    "Zürich ☕ 東京 🚀",
    "65f1c0de4a2b9e0012345678",
    'quotes " and \\ backslash',
    "a/b?c#d%20e+f&g",  # every character that means something in a URL
    "☕" * 42 + "ab",  # exactly 128 bytes of UTF-8
])
def test_string_ids_round_trip_exactly(gw, connect, new_id, gid):
    suffix = f" {new_id()}" if len(gid.encode()) < 120 else ""  # fresh per test, within 128
    gid = gid + suffix
    a, b = members(gw, new_id, 2)
    gw.put_group(gid, [a, b], "Strings")
    body = gw.admin("GET", group_path(gid)).json()
    assert body["id"] == gid and sorted(body["members"]) == [a, b], body
    chat_flow(gw, connect, gid, a, b)


def test_a_number_names_the_group_of_its_decimal_string(gw, connect, new_id):
    n = new_id()
    a, b = members(gw, new_id, 2)
    gw.put_group(n, [a, b], "Numbered")  # PUT /api/groups/<n>
    # Sent as the number n, it comes back as the string "n"; sent as "n", the same group.
    chat_flow(gw, connect, str(n), a, b, sent_as=n)
    ca = connect(gw, a)
    ack = ca.call("sendMessage", {"groupId": str(n), "text": "as a string", "attachments": []})
    assert ca.wait_for("newMessage", lambda m: m["id"] == ack["id"])["groupId"] == str(n)


def test_digit_ids_keep_their_leading_zeros(gw, connect, new_id):
    n = new_id()
    padded, plain = f"00{n}", str(n)
    a, b, c = members(gw, new_id, 3)
    gw.put_group(padded, [a, b], "padded")
    chat_flow(gw, connect, padded, a, b)
    # The plain number is another group, which a is not a member of.
    gw.put_group(plain, [c], "plain")
    ca = connect(gw, a)
    for wire in (plain, n):
        ack = ca.call("sendMessage", {"groupId": wire, "text": "wrong room", "attachments": []})
        assert ack["ok"] is False and ack["error"]["code"] == "not_member", ack
        assert json.dumps(plain) in ack["error"]["message"], ack
    assert gw.history(plain) == []
    assert [m["groupId"] for m in gw.history(padded)] == [padded]
    assert gw.admin("GET", group_path(padded)).json()["name"] == "padded"
    assert gw.admin("GET", group_path(plain)).json()["name"] == "plain"


@pytest.mark.parametrize("bad,says", [
    ("x" * 129, "129 bytes; the limit is 128"),
    ("☕" * 43, "129 bytes; the limit is 128"),
    ("", "must not be empty"),
    ("line\nbreak", "control characters"),
    ("nul\u0000", "control characters"),
    ("del\u007f", "control characters"),
    ({"id": 1}, "not an object"),
    ([1], "not an array"),
    (True, "not a boolean"),
    (None, "not null"),
    (-1, "not a negative number"),
    (1.5, "not a fractional"),
])
@pytest.mark.parametrize("event", ["sendMessage", "joinGroup", "leaveGroup", "markAsRead"])
def test_invalid_ids_get_invalid_payload(gw, connect, make_group, bad, says, event):
    gid, (a,) = make_group(gw, 1)
    c = connect(gw, a)
    data = {"groupId": bad, "text": "hi", "attachments": [], "messageId": "1"}
    ack = c.call(event, data)
    assert ack["ok"] is False and ack["error"]["code"] == "invalid_payload", ack
    assert says in ack["error"]["message"], ack
    c.emit(event, data)  # without an ack: the error event
    err = c.wait_for("error")
    assert err["code"] == "invalid_payload" and says in err["message"], err
    # The session goes on.
    ok = c.call("sendMessage", {"groupId": gid, "text": "still here", "attachments": []})
    assert ok["ok"] is True, ok


def test_the_limit_is_configurable(start_gateway, connect, new_id):
    gw = start_gateway(CORECAST_MAX_GROUP_ID_BYTES="8")
    (a,) = members(gw, new_id, 1)
    gw.put_group("8 bytes!", [a], "at the limit")
    c = connect(gw, a)
    assert c.call("joinGroup", {"groupId": "8 bytes!"})["ok"] is True
    ack = c.call("joinGroup", {"groupId": "9 bytes!!"})
    assert ack["error"]["code"] == "invalid_payload", ack
    assert "9 bytes; the limit is 8" in ack["error"]["message"], ack
    r = gw.admin("PUT", group_path("9 bytes!!"), {"name": "x", "members": [a]})
    assert r.status_code == 400 and "the limit is 8" in r.json()["error"], r.text


# ----- the admin API: the id is a percent-encoded path segment ----------------------------------

def test_admin_api_decodes_percent_encoded_ids(gw, connect, new_id):
    a, b = members(gw, new_id, 2)
    n = new_id()
    gid = f"team berlin/{n} ☕+"
    # Written by hand: %20 is a space, %2F a slash inside the id, %E2%98%95 is ☕, + is a plus.
    path = f"/api/groups/team%20berlin%2F{n}%20%E2%98%95+"
    r = gw.admin("PUT", path, {"name": "Berlin", "members": [a]})
    assert r.status_code == 200, r.text
    assert gw.admin("GET", path).json() == {"id": gid, "name": "Berlin", "members": [a]}
    assert gw.admin("PUT", f"{path}/members/{b}").json() == {"ok": True, "changed": True}
    chat_flow(gw, connect, gid, a, b)
    assert gw.admin("DELETE", f"{path}/members/{b}").json() == {"ok": True, "changed": True}
    assert gw.admin("GET", path).json()["members"] == [a]
    # Lower-case hex decodes the same; an id that differs by one byte is another group.
    assert gw.admin("GET", path.replace("%E2%98%95", "%e2%98%95")).json()["id"] == gid
    assert gw.admin("GET", path.replace("+", "%20")).status_code == 404


@pytest.mark.parametrize("segment,says", [
    ("%FF", "not UTF-8"),
    ("bad%0Aid", "control characters"),
    ("x" * 129, "129 bytes; the limit is 128"),
    ("%E2%98%95" * 43, "129 bytes; the limit is 128"),
])
def test_admin_api_refuses_bad_ids_with_a_clear_error(gw, new_id, segment, says):
    (a,) = members(gw, new_id, 1)
    for method, path, body in [("PUT", f"/api/groups/{segment}", {"name": "x", "members": [a]}),
                               ("GET", f"/api/groups/{segment}", None),
                               ("GET", f"/api/groups/{segment}/messages", None),
                               ("PUT", f"/api/groups/{segment}/members/{a}", None),
                               ("DELETE", f"/api/groups/{segment}/members/{a}", None)]:
        r = gw.admin(method, path, body)
        assert r.status_code == 400, (method, path, r.status_code, r.text)
        assert r.headers["content-type"] == "application/json", r.headers
        err = r.json()["error"]
        assert err.startswith("invalid group id in the path") and says in err, (path, err)


def test_admin_api_empty_id_segment(gw, new_id):
    (a,) = members(gw, new_id, 1)
    r = gw.admin("PUT", f"/api/groups//members/{a}")
    assert r.status_code == 400 and "must not be empty" in r.json()["error"], r.text


# ----- readBy ------------------------------------------------------------------------------------

def test_sender_has_read_and_their_own_mark_is_not_broadcast(gw, connect, make_group):
    gid, (a, b) = make_group(gw, 2)
    ca, cb = connect(gw, a), connect(gw, b)
    ack = ca.call("sendMessage", {"groupId": gid, "text": "mine", "attachments": []})
    assert cb.wait_for("newMessage", lambda m: m["id"] == ack["id"])["readBy"] == [a]
    # The sender marks their own message: acked, nothing to tell anyone.
    assert ca.call("markAsRead", {"messageId": ack["id"], "groupId": gid}) == {"ok": True}
    # b's mark comes after it, through the same room: once b's messageRead is here, a messageRead
    # for a would have arrived before it.
    assert cb.call("markAsRead", {"messageId": ack["id"], "groupId": gid}) == {"ok": True}
    for c in (ca, cb):
        c.wait_for("messageRead", lambda r: r["userId"] == b)
        assert [r["userId"] for r in c.events("messageRead")] == [b], c.events("messageRead")
    assert gw.history(gid)[0]["readBy"] == [a, b]
