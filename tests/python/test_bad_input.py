"""Bad input (issue 2, item 10): each kind gets a clear error (an ack `{ok:false, error:{code,
message}}` when an ack was asked for, else an `error` event `{message, code}`), nothing is
stored, and both the offending session and the others go on.

Protocol-level kinds (binary packets, a frame over maxPayload, an unknown namespace, no CONNECT
in time, bad tokens) are in test_protocol.py.
"""

import json

import pytest


@pytest.fixture
def gw(module_gateway):
    return module_gateway


@pytest.fixture
def room(gw, make_group, connect, raw):
    """A group with an offender (official client and raw client, same user) and a bystander."""
    gid, (bad, other) = make_group(gw, 2)
    return {"gid": gid, "bad": bad, "other": other,
            "client": connect(gw, bad), "raw": raw(gw, bad), "bystander": connect(gw, other)}


def assert_error(payload, code):
    assert isinstance(payload, dict), payload
    if "ok" in payload:  # an ack
        assert payload["ok"] is False, payload
        err = payload["error"]
    else:  # an error event
        err = payload
    assert err.get("code") == code, payload
    assert isinstance(err.get("message"), str) and err["message"].strip(), payload


def assert_sessions_go_on(gw, room):
    """The offender and the bystander still exchange messages, and nothing bad was stored."""
    gid = room["gid"]
    ack = room["bystander"].call("sendMessage", {"groupId": gid, "text": "still here", "attachments": []})
    assert ack["ok"] is True, ack
    room["client"].wait_for("newMessage", lambda m: m["id"] == ack["id"])
    room["raw"].wait_event("newMessage", lambda m: m["id"] == ack["id"])
    ack2 = room["client"].call("sendMessage", {"groupId": gid, "text": "me too", "attachments": []})
    assert ack2["ok"] is True, ack2
    room["bystander"].wait_for("newMessage", lambda m: m["id"] == ack2["id"])
    assert [m["text"] for m in gw.history(gid)] == ["me too", "still here"]


def check_both_ways(gw, room, event, data, code):
    """Sends `data` with an ack (expects an error ack), then without (expects an error event)."""
    c = room["client"]
    assert_error(c.call(event, data), code)
    c.emit(event, data)
    assert_error(c.wait_for("error"), code)
    assert_sessions_go_on(gw, room)


def msg(gid, **over):
    m = {"groupId": gid, "text": "hello", "attachments": []}
    m.update(over)
    return {k: v for k, v in m.items() if v is not ...}


# ----- undecodable packets (raw frames): the connection closes, as on the reference server -------

@pytest.mark.parametrize("frame", [
    '42["sendMessage",{"groupId":1,"text":',  # broken JSON
    '425["sendMessage",{"groupId":1,"text":',  # broken JSON, with an ack id
    '42{"not":"an array"}',
    '42{}',
    '42[]',
    '42"sendMessage"',
    '4abc',  # unknown Socket.IO packet type
    '42abc["sendMessage",{}]',  # bad ack id
    '42["disconnect"]',  # a reserved event name
])
def test_undecodable_packet_closes_the_connection(gw, room, frame):
    r = room["raw"]
    r.send(frame)
    closed = r.wait_close(timeout=5)
    assert closed.code == 1002, closed
    assert r.events("error") == []
    # The same user's other connection and the bystander go on; nothing was stored.
    gid = room["gid"]
    ack = room["bystander"].call("sendMessage", {"groupId": gid, "text": "still here", "attachments": []})
    assert ack["ok"] is True, ack
    room["client"].wait_for("newMessage", lambda m: m["id"] == ack["id"])
    assert [m["text"] for m in gw.history(gid)] == ["still here"]


def test_an_event_named_by_a_number_decodes_and_is_rejected(gw, room):
    r = room["raw"]
    r.send('42[5,{"groupId":1}]')
    assert_error(r.wait_event("error"), "invalid_payload")
    assert_sessions_go_on(gw, room)


def test_payload_not_an_object(gw, room):
    check_both_ways(gw, room, "sendMessage", "just a string", "invalid_payload")


def test_payload_missing(gw, room):
    r = room["raw"]
    r.send('427["sendMessage"]')
    assert_error(r.wait_ack(7), "invalid_payload")
    assert_sessions_go_on(gw, room)


# ----- wrong types -----------------------------------------------------------------------------------

@pytest.mark.parametrize("field,value", [
    ("groupId", ""),
    ("groupId", {"id": 1}),
    ("groupId", True),
    ("groupId", -1),
    ("groupId", 1.5),
    ("text", 42),
    ("text", None),
    ("attachments", "https://x.example/a.png"),
    ("attachments", [["https://x.example/a.png", "image"]]),
    ("attachments", [{"url": 5, "type": "image"}]),
    ("clientMsgId", 123),
])
def test_send_message_wrong_type(gw, room, field, value):
    check_both_ways(gw, room, "sendMessage", msg(room["gid"], **{field: value}), "invalid_payload")


@pytest.mark.parametrize("event,data", [
    ("joinGroup", {"groupId": ""}),
    ("leaveGroup", {"groupId": [1]}),
    ("markAsRead", {"messageId": {"x": 1}, "groupId": 1}),
    ("markAsRead", {"messageId": "not-an-id", "groupId": 1}),
])
def test_other_events_wrong_type(gw, room, event, data):
    check_both_ways(gw, room, event, data, "invalid_payload")


# ----- missing fields --------------------------------------------------------------------------------

@pytest.mark.parametrize("missing", ["groupId", "text"])
def test_send_message_missing_field(gw, room, missing):
    check_both_ways(gw, room, "sendMessage", msg(room["gid"], **{missing: ...}), "invalid_payload")


@pytest.mark.parametrize("event,data", [
    ("joinGroup", {}),
    ("leaveGroup", {}),
    ("markAsRead", {"groupId": 1}),
    ("markAsRead", {"messageId": "1"}),
])
def test_other_events_missing_field(gw, room, event, data):
    check_both_ways(gw, room, event, data, "invalid_payload")


# ----- unknown events -----------------------------------------------------------------------------

@pytest.mark.parametrize("event", ["deleteMessage", "sendmessage", "newMessage", ""])
def test_unknown_event(gw, room, event):
    check_both_ways(gw, room, event, {"groupId": room["gid"]}, "unknown_event")


# ----- message content ----------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["", "   ", "\n\t "])
def test_empty_or_blank_text(gw, room, text):
    check_both_ways(gw, room, "sendMessage", msg(room["gid"], text=text), "invalid_payload")


def test_text_over_limit(gw, room):
    check_both_ways(gw, room, "sendMessage", msg(room["gid"], text="a" * 4001), "invalid_payload")


def test_text_limit_counts_characters_not_bytes(gw, room, connect):
    """4000 characters is allowed even when they take 4 bytes each in UTF-8; 4001 is not."""
    c = room["client"]
    ack = c.call("sendMessage", msg(room["gid"], text="😀" * 4000))
    assert ack["ok"] is True, ack
    assert_error(c.call("sendMessage", msg(room["gid"], text="é" * 4001)), "invalid_payload")
    room["bystander"].wait_for("newMessage", lambda m: m["id"] == ack["id"])


def test_too_many_attachments(gw, room):
    att = [{"url": f"https://cdn.example.test/{i}.png", "type": "image"} for i in range(11)]
    check_both_ways(gw, room, "sendMessage", msg(room["gid"], attachments=att), "invalid_payload")


def test_ten_attachments_are_fine(gw, room):
    att = [{"url": f"https://cdn.example.test/{i}.png", "type": "image"} for i in range(10)]
    ack = room["client"].call("sendMessage", msg(room["gid"], attachments=att))
    assert ack["ok"] is True, ack
    assert room["bystander"].wait_for("newMessage", lambda m: m["id"] == ack["id"])["attachments"] == att


@pytest.mark.parametrize("url", [
    "javascript:alert(1)",
    "ftp://files.example.test/a.png",
    "file:///etc/passwd",
    "data:image/png;base64,AAAA",
    "cdn.example.test/a.png",
    "",
    "https://",
])
def test_attachment_url_not_http(gw, room, url):
    att = [{"url": url, "type": "image"}]
    check_both_ways(gw, room, "sendMessage", msg(room["gid"], attachments=att), "invalid_payload")


@pytest.mark.parametrize("type_", ["exe", "IMAGE", "", "application/pdf"])
def test_attachment_type_not_allowed(gw, room, type_):
    att = [{"url": "https://cdn.example.test/a.bin", "type": type_}]
    check_both_ways(gw, room, "sendMessage", msg(room["gid"], attachments=att), "invalid_payload")


@pytest.mark.parametrize("missing", ["url", "type"])
def test_attachment_missing_field(gw, room, missing):
    att = [{k: v for k, v in {"url": "https://cdn.example.test/a.png", "type": "image"}.items()
            if k != missing}]
    check_both_ways(gw, room, "sendMessage", msg(room["gid"], attachments=att), "invalid_payload")


# ----- group and message references -----------------------------------------------------------------

def test_group_user_is_not_in(gw, room, make_group):
    other_gid, _ = make_group(gw, 1)
    check_both_ways(gw, room, "sendMessage", msg(other_gid), "not_member")


def test_group_that_does_not_exist(gw, room, new_id):
    check_both_ways(gw, room, "sendMessage", msg(new_id()), "not_member")


def test_unknown_message_id(gw, room):
    check_both_ways(gw, room, "markAsRead", {"messageId": "123456789", "groupId": room["gid"]},
                    "not_found")


def test_client_msg_id_too_long(gw, room):
    check_both_ways(gw, room, "sendMessage", msg(room["gid"], clientMsgId="x" * 129), "invalid_payload")


def test_many_bad_inputs_in_a_row_do_not_break_the_session(gw, room):
    r = room["raw"]
    frames = ['42[5,{}]', '42["nope",{}]', '42["sendMessage",{"groupId":true}]',
              '42["sendMessage",{"groupId":%s,"text":"","attachments":[]}]' % json.dumps(room["gid"])] * 10
    for f in frames:
        r.send(f)
    for _ in frames:
        r.wait_event("error")
    assert_sessions_go_on(gw, room)
