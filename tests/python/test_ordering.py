"""Ordering: every member receives a group's messages in one order, ascending by id, with
senders and receivers spread over 4 shards."""

import threading

import pytest

GATEWAY_ENV = {"CORECAST_SHARDS": 4}


@pytest.fixture
def gw(module_gateway):
    assert module_gateway.shards == 4
    return module_gateway


def flood(clients, gid, per_sender):
    """Each client sends per_sender messages concurrently (each waits for its acks)."""
    acks, errors, lock = [], [], threading.Lock()

    def run(n, c):
        for i in range(per_sender):
            try:
                ack = c.call("sendMessage", {"groupId": gid, "text": f"s{n}-{i}", "attachments": []})
            except Exception as e:  # reported below
                with lock:
                    errors.append(repr(e))
                return
            with lock:
                (acks if ack.get("ok") else errors).append(ack)

    threads = [threading.Thread(target=run, args=(n, c)) for n, c in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:5]
    return acks


def received_ids(client, gid, count, timeout=30):
    for _ in range(count):
        client.wait_for("newMessage", lambda m: m["groupId"] == gid, timeout=timeout)
    return [m["id"] for m in client.events("newMessage") if m["groupId"] == gid]


def test_one_order_for_every_member(gw, connect, make_group):
    senders_n, receivers_n, per_sender = 4, 4, 25
    gid, users = make_group(gw, senders_n + receivers_n)
    senders = [connect(gw, u) for u in users[:senders_n]]
    receivers = [connect(gw, u) for u in users[senders_n:]]
    receivers.append(connect(gw, users[-1]))  # a second tab of one receiver
    acks = flood(senders, gid, per_sender)
    total = senders_n * per_sender
    assert len(acks) == total
    acked = {a["id"] for a in acks}
    assert len(acked) == total, "duplicate ids"
    orders = []
    for c in receivers + senders:
        ids = received_ids(c, gid, total)
        assert len(ids) == total, (c.name, len(ids))
        assert set(ids) == acked, c.name
        as_ints = [int(i) for i in ids]
        assert as_ints == sorted(as_ints), f"{c.name} received out of id order"
        orders.append(ids)
    assert all(o == orders[0] for o in orders), "members saw different orders"
    history = [m["id"] for m in gw.history(gid, limit=500)]
    assert history == orders[0][::-1]


def test_per_sender_order_is_kept(gw, connect, make_group):
    """One sender's messages, sent one after another, arrive in sending order."""
    gid, (a, b) = make_group(gw, 2)
    ca, cb = connect(gw, a), connect(gw, b)
    n = 30
    for i in range(n - 1):
        ca.emit("sendMessage", {"groupId": gid, "text": str(i), "attachments": []})
    last = ca.call("sendMessage", {"groupId": gid, "text": str(n - 1), "attachments": []})
    assert last["ok"] is True
    cb.wait_for("newMessage", lambda m: m["id"] == last["id"])
    texts = [m["text"] for m in cb.events("newMessage")]
    assert texts == [str(i) for i in range(n)], texts


def test_several_groups_concurrently(gw, connect, make_group):
    """Messages of different groups (different owner shards) interleave, each group in order."""
    groups = [make_group(gw, 3) for _ in range(4)]
    senders = [connect(gw, users[0]) for _, users in groups]
    watchers = [connect(gw, users[1]) for _, users in groups]
    per = 15
    results = []

    def run(i):
        gid = groups[i][0]
        results.append(flood([senders[i], connect(gw, groups[i][1][2])], gid, per))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(groups))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for (gid, _), w in zip(groups, watchers):
        ids = [int(i) for i in received_ids(w, gid, 2 * per)]
        assert ids == sorted(ids) and len(set(ids)) == 2 * per, (gid, ids)


def test_per_sender_order_is_kept_with_the_message_limit_on(start_gateway, connect, make_group):
    """With the per-user message limit on, each message goes by way of its sender's limiter
    shard before its group's owner: messages sent back to back by senders on every shard still
    arrive in sending order, and every one is delivered (the limit is far above what they
    send)."""
    gw = start_gateway(CORECAST_SHARDS=4, CORECAST_RATE_LIMIT_PER_MIN=1000)
    senders_n, n = 6, 40
    gid, users = make_group(gw, senders_n + 1)
    senders = [connect(gw, u) for u in users[:senders_n]]
    receiver = connect(gw, users[-1])
    lasts = []
    for s_i, c in enumerate(senders):
        for i in range(n - 1):
            c.emit("sendMessage", {"groupId": gid, "text": f"{s_i}:{i}", "attachments": []})
    for s_i, c in enumerate(senders):
        last = c.call("sendMessage", {"groupId": gid, "text": f"{s_i}:{n - 1}", "attachments": []})
        assert last["ok"] is True, last
        lasts.append(last["id"])
    for last in lasts:
        receiver.wait_for("newMessage", lambda m, last=last: m["id"] == last)
    got = [m["text"] for m in receiver.events("newMessage")]
    assert len(got) == senders_n * n, len(got)
    for s_i in range(senders_n):
        mine = [int(t.split(":")[1]) for t in got if t.split(":")[0] == str(s_i)]
        assert mine == list(range(n)), f"sender {s_i}: {mine}"
