"""Durability: what the gateway acknowledged survives `kill -9`; restart on the same data dir."""

import threading
import uuid


def test_acked_messages_survive_kill9(gateway, connect, make_group):
    gid, (a, b) = make_group(gateway, 2)
    ca, cb = connect(gateway, a), connect(gateway, b)
    acked = [ca.send_message(gid, f"durable {i}") for i in range(20)]
    ack = cb.send_message(gid, "last before the crash")
    cb_read = cb.call("markAsRead", {"messageId": acked[0]["id"], "groupId": gid})
    assert cb_read == {"ok": True}
    gateway.kill9()
    gateway.start()
    history = gateway.history(gid, limit=500)
    want = [m["id"] for m in acked] + [ack["id"]]
    assert [m["id"] for m in history] == want[::-1]
    first = history[-1]
    assert first["text"] == "durable 0" and first["timestamp"] == acked[0]["timestamp"]
    assert b in first["readBy"], first
    # Users, groups and membership survived too: members connect and chat again.
    ca2, cb2 = connect(gateway, a), connect(gateway, b)
    again = ca2.send_message(gid, "after restart")
    cb2.wait_for("newMessage", lambda m: m["id"] == again["id"])
    assert int(again["id"]) > int(ack["id"]), "ids went backwards after the restart"


def test_acked_under_concurrent_load_survive_kill9(gateway, connect, make_group):
    """Several senders; kill -9 while some sends are still in flight: every ack'd one is kept."""
    gid, users = make_group(gateway, 4)
    clients = [connect(gateway, u) for u in users]
    acked, lock = [], threading.Lock()
    stop = threading.Event()

    def run(c, n):
        i = 0
        while not stop.is_set():
            try:
                ack = c.call("sendMessage", {"groupId": gid, "text": f"{n}-{i}", "attachments": []},
                             timeout=5)
            except Exception:  # the gateway died under us: in flight, not acked
                return
            if ack.get("ok"):
                with lock:
                    acked.append(ack["id"])
            i += 1

    threads = [threading.Thread(target=run, args=(c, n), daemon=True) for n, c in enumerate(clients)]
    for t in threads:
        t.start()
    # Synchronise on progress, not time: kill once 80 messages are acked.
    while len(acked) < 80:
        clients[0].wait_for("newMessage", timeout=30)
    gateway.kill9()
    stop.set()
    for t in threads:
        t.join(10)
    with lock:
        acked_ids = set(acked)
    gateway.start()
    stored = {m["id"] for m in gateway.history(gid, limit=500)}
    missing = acked_ids - stored
    assert not missing, f"{len(missing)} acknowledged messages lost: {sorted(missing)[:10]}"


def test_client_msg_id_dedup_survives_restart(gateway, connect, make_group):
    """A client that resends after the gateway came back gets the original ack."""
    gid, (a,) = make_group(gateway, 1)
    cmid = str(uuid.uuid4())
    first = connect(gateway, a).send_message(gid, "sent once", clientMsgId=cmid)
    gateway.kill9()
    gateway.start()
    again = connect(gateway, a).send_message(gid, "sent once", clientMsgId=cmid)
    assert (again["id"], again["timestamp"]) == (first["id"], first["timestamp"])
    assert [m["id"] for m in gateway.history(gid)] == [first["id"]]


def test_graceful_restart_keeps_everything(gateway, connect, make_group):
    gid, (a,) = make_group(gateway, 1)
    ids = [connect(gateway, a).send_message(gid, f"g{i}")["id"] for i in range(3)]
    gateway.restart()
    assert [m["id"] for m in gateway.history(gid)] == ids[::-1]
