"""Connection state recovery as Python clients see it (tests/js/recovery.test.js has the
recoveries themselves, with socket.io-client, which implements them).

python-socketio (5.x) has no recovery: it keeps no pid and no offset, and calls a handler
with every argument of an event. So corecast tells its handshake apart (its `t` is seconds with
a fraction) and sends it neither, and a handler written for the payload alone keeps working.
"""

import json
import threading

import pytest
import socketio

from raw_client import RawClient


@pytest.fixture
def gw_url_and_group(module_gateway, make_group):
    gid, users = make_group(module_gateway, 2)
    return module_gateway, gid, users


def test_python_socketio_handlers_get_the_payload_alone(gw_url_and_group):
    gw, gid, (a, b) = gw_url_and_group
    got, arrived = [], threading.Event()
    sio = socketio.Client(reconnection=False)

    @sio.on("newMessage")
    def on_new_message(message):  # one parameter: what an app written for the Node gateway has
        got.append(message)
        arrived.set()

    sio.connect(f"http://{gw.public}", auth={"token": gw.token(b)}, socketio_path="/socket.io/",
                wait_timeout=10)
    try:
        sender = socketio.Client(reconnection=False)
        sender.connect(f"http://{gw.public}", auth={"token": gw.token(a)},
                       socketio_path="/socket.io/", wait_timeout=10)
        try:
            ack = sender.call("sendMessage", {"groupId": gid, "text": "to python", "attachments": []},
                              timeout=10)
            assert ack["ok"] is True, ack
            assert arrived.wait(10), "the handler was not called"
            assert got[0]["id"] == ack["id"] and got[0]["text"] == "to python"
        finally:
            sender.disconnect()
    finally:
        sio.disconnect()


def test_the_connect_answer_has_a_pid_only_for_clients_that_keep_offsets(gw_url_and_group):
    gw, gid, (a, _) = gw_url_and_group
    for query, keeps in [("EIO=4&transport=websocket", True),
                         ("EIO=4&transport=websocket&t=PxkQ3aB", True),
                         ("transport=websocket&EIO=4&t=1764750000.1234", False)]:
        c = RawClient(gw.public, query=query)
        try:
            kind, answer = c.connect(gw.token(a))
            assert kind == "connect", answer
            assert ("pid" in answer) is keeps, (query, answer)
            ack = c.call("sendMessage", {"groupId": gid, "text": query, "attachments": []})
            packet = c.wait_text(lambda t, q=query: t.startswith('42["newMessage"') and q in t)
            args = json.loads(packet[2:])
            assert args[1]["id"] == ack["id"]
            assert len(args) == (3 if keeps else 2), args
            if keeps:
                assert isinstance(args[2], str) and args[2], args
        finally:
            c.close()


def test_a_bad_or_foreign_pid_or_offset_gets_a_fresh_session(gw_url_and_group):
    gw, _, (a, b) = gw_url_and_group
    first = RawClient(gw.public)
    try:
        kind, answer = first.connect(gw.token(a))
        assert kind == "connect"
        a_pid = answer["pid"]
    finally:
        first.close()
    for extra in [{"pid": a_pid, "offset": "0"},  # another user's session
                  {"pid": "not a pid"}, {"pid": a_pid[:-1] + "x"}, {"pid": 7},
                  {"pid": "", "offset": ""}, {"pid": a_pid, "offset": "!!"}, {"offset": "0"}]:
        c = RawClient(gw.public)
        try:
            kind, answer = c.connect(auth={"token": gw.token(b), **extra})
            assert kind == "connect", (extra, answer)
            assert answer["pid"] != extra.get("pid"), "a session of its own"
        finally:
            c.close()
