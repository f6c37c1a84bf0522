"""Offline email notices across gateway nodes (issue 18, cluster mode, with issue 5's notifier):
three `corecast serve` nodes on one Redis and one Cassandra keyspace, the real
`corecast-notifier` on the same keyspace, and the real SMTP server (scripts/smtp_server.py).

    clients -> node 0 / 1 / 2 -> the group's owner node writes the message and one notice per
               member online on no node (the cluster-wide presence replica), in one write
            -> corecast-notifier (CORECAST_STORE=scylla, same keyspace) -> SMTP -> maildir

- a member online on another node than the sender's gets no email, a member connected nowhere
  does, and so does nobody else (the sender, members online elsewhere);
- a member online only on a node killed with SIGKILL goes offline everywhere once the cluster
  sees the node gone (CORECAST_CLUSTER_DEAD_AFTER_SECS plus two checks), and is emailed the
  messages sent after that;
- a member who has just closed their last connection is emailed what is sent within the
  presence debounce window, as on one node, and co-members are told they left only after it.

How "no email" is asserted: the notifier takes a message's recipients together (all of its
notices carry the message's time, so every (member, group) pair of it falls due in the same
poll, notifier/src/plan.rs `due_batches`, and one round sends them all, worker.rs `round`).
So the test waits for the email of a member who must get one, then for the notifier's outbox
to be empty at a later poll; by then any other email of the same message was sent, and its
absence is the answer. Fixtures: test_cluster.py (nodes, Redis, Cassandra, clients that record
in wire order) and test_notifications.py (SMTP server, notifier process).
"""

import time

import pytest

from polling import poll
from test_cluster import (  # noqa: F401 - fixtures, used by name
    _metric, cassandra, connect, redis, redis_server, start_cluster)
from test_notifications import (  # noqa: F401 - fixtures, used by name
    MAIL_TIMEOUT, addr, put_user, smtp, start_notifier, wait_settled)

pytestmark = pytest.mark.cassandra

DEAD_AFTER_SECS = 3
COALESCE_SECS = 1


@pytest.fixture
def cluster(cassandra, redis, start_gateway):  # noqa: F811 - the fixtures imported above
    """Three nodes; presence debounced 200 ms, a node dead after DEAD_AFTER_SECS without
    refreshing its registration."""
    return start_cluster(cassandra, redis, start_gateway, CORECAST_PRESENCE_DEBOUNCE_MS=200,
                         CORECAST_CLUSTER_DEAD_AFTER_SECS=DEAD_AFTER_SECS)


@pytest.fixture
def notifier(cluster, smtp, start_notifier):  # noqa: F811
    """The notifier on the cluster's keyspace, as one environment would start it next to the
    nodes: the store settings are the nodes' own (it never talks to Redis or to a node)."""
    env = {k: cluster[0].env[k] for k in
           ("CORECAST_STORE", "CORECAST_SCYLLA_NODES", "CORECAST_SCYLLA_KEYSPACE")}
    return start_notifier(cluster[0], smtp, COALESCE_SECS, **env)


def users_in_group(admin, new_id, names):
    """Fresh users (each with an email address) in one fresh group; returns (gid, ids)."""
    ids = [new_id() for _ in names]
    for uid, name in zip(ids, names):
        put_user(admin, uid, addr(uid), name)
    gid = f"g-{new_id()}"
    admin.put_group(gid, ids, "Team")
    return gid, ids


def online_seen_by(client, gid):
    ack = client.call("getOnline", {"groupId": gid})
    assert ack.get("ok") is True, ack
    return set(ack["online"])


def wait_online_everywhere(watchers, gid, want: set, gone: set = frozenset()):
    """Waits until the group's owner shard on each watcher's node counts `want` online and
    none of `gone`: `getOnline` answers from the same replica of cluster-wide presence that
    the group's owner node reads to decide who gets a notice."""
    for node, c in watchers.items():
        poll(f"node-{node} to count {sorted(want)} online and not {sorted(gone)}",
             lambda c=c: (lambda s: want <= s and not s & gone)(online_seen_by(c, gid)), 15, 0.1)


def mail_texts(smtp_server, uid):
    return [m["text"] for m in smtp_server.mails_to(addr(uid))]


def test_a_member_online_on_another_node_gets_no_email_one_connected_nowhere_does(
        cluster, notifier, smtp, connect, new_id):  # noqa: F811
    gid, (a, b, c, d) = users_in_group(
        cluster[0], new_id, ["Ann Sender", "Ben Elsewhere", "Cat Offline", "Dan Third"])
    ca = connect(cluster[0], a)
    cb = connect(cluster[1], b)  # online only on node 1
    cd = connect(cluster[2], d)
    # c is connected nowhere.
    wait_online_everywhere({0: ca, 1: cb, 2: cd}, gid, {a, b, d}, gone={c})

    first = ca.send_message(gid, "hello from node 0")
    second = cd.send_message(gid, "and from node 2")
    for member in (ca, cb, cd):  # every online member has both, live
        for ack in (first, second):
            member.wait_for("newMessage", lambda m, ack=ack: m["id"] == ack["id"], timeout=15)

    # c: both messages, in one email or two (the 1 s window may cut between them).
    poll("c's email(s) of both messages",
         lambda: (lambda t: "hello from node 0" in t and "and from node 2" in t)(
             "\n".join(mail_texts(smtp, c))), COALESCE_SECS + MAIL_TIMEOUT, 0.1)
    m = wait_settled(notifier)
    assert not smtp.mails_to(addr(b)), "b, online on node 1, got an email"
    assert not smtp.mails_to(addr(a)), "a (sender of one, online on node 0) got an email"
    assert not smtp.mails_to(addr(d)), "d (sender of one, online on node 2) got an email"
    assert {r for x in smtp.mails() for r in x["meta"]["rcpt_tos"]} == {addr(c)}
    # The owner node wrote no notice for the members online on other nodes at all: the
    # notifier's own last-moment check (stored presence) had nothing to drop.
    assert m["corecast_notifier_skipped_online_total"] == 0, m
    assert m["corecast_notifier_notices_sent_total"] == 2, m


def test_a_member_only_on_a_killed_node_is_emailed_once_the_cluster_sees_it_gone(
        cluster, notifier, smtp, connect, new_id):  # noqa: F811
    gid, (a, b, c, e) = users_in_group(
        cluster[0], new_id, ["Ann Sender", "Ben Elsewhere", "Cat Offline", "Eve Doomed"])
    ca = connect(cluster[0], a)
    cb = connect(cluster[1], b)
    ce = connect(cluster[2], e)  # online only on node 2, which will be killed
    wait_online_everywhere({0: ca, 1: cb, 2: ce}, gid, {a, b, e}, gone={c})

    # While node 2 lives, e is online: only c is emailed.
    before = ca.send_message(gid, "before the crash")
    ce.wait_for("newMessage", lambda m: m["id"] == before["id"], timeout=15)
    poll("c's email of the first message",
         lambda: any("before the crash" in t for t in mail_texts(smtp, c)),
         COALESCE_SECS + MAIL_TIMEOUT, 0.1)
    wait_settled(notifier)
    assert not smtp.mails_to(addr(e)), "e, online on node 2, got an email"
    assert not smtp.mails_to(addr(b)), "b, online on node 1, got an email"

    cluster[2].kill9()
    # Gone once its registration expires (DEAD_AFTER_SECS) and two checks miss it.
    ca.wait_for("userOnline", lambda p: p == {"userId": e, "isOnline": False},
                timeout=DEAD_AFTER_SECS + 12)
    for i in (0, 1):  # both survivors agree on who is alive, and so on the group's owner
        poll(f"node-{i} to see node-2 gone",
             lambda gw=cluster[i]: _metric(gw, "corecast_cluster_nodes") == 2, 15, 0.1)
    wait_online_everywhere({0: ca, 1: cb}, gid, {a, b}, gone={c, e})

    after = ca.send_message(gid, "after the crash")
    cb.wait_for("newMessage", lambda m: m["id"] == after["id"], timeout=15)
    mails_e = poll("e's email of the message after the crash",
                   lambda: smtp.mails_to(addr(e)), COALESCE_SECS + MAIL_TIMEOUT, 0.1)
    poll("c's email of the message after the crash",
         lambda: any("after the crash" in t for t in mail_texts(smtp, c)),
         COALESCE_SECS + MAIL_TIMEOUT, 0.1)
    m = wait_settled(notifier)
    mails_e = smtp.mails_to(addr(e))
    assert len(mails_e) == 1, [x["meta"] for x in mails_e]
    assert "after the crash" in mails_e[0]["text"], mails_e[0]["text"]
    assert "before the crash" not in mails_e[0]["text"], "e was online for the first message"
    assert not smtp.mails_to(addr(b)), "b, online on node 1 throughout, got an email"
    assert not smtp.mails_to(addr(a)), "the sender got an email"
    assert m["corecast_notifier_skipped_online_total"] == 0, m


def test_a_member_who_just_left_is_emailed_at_once_and_announced_after_the_window(
        cassandra, redis, start_gateway, smtp, start_notifier, connect, new_id):  # noqa: F811
    # As on one node: who gets a notice follows the undebounced flip (b has no connection on
    # any node), co-members' `userOnline` the debounced one. The email goes out after the
    # window, when the stored presence says b left before the message: the notifier's own
    # check would let it through either way, so the owner node's notice is what is tested.
    debounce_ms, coalesce = 3000, 5
    nodes = start_cluster(cassandra, redis, start_gateway,
                          CORECAST_PRESENCE_DEBOUNCE_MS=debounce_ms)
    env = {k: nodes[0].env[k] for k in
           ("CORECAST_STORE", "CORECAST_SCYLLA_NODES", "CORECAST_SCYLLA_KEYSPACE")}
    notifier = start_notifier(nodes[0], smtp, coalesce, **env)
    gid, (a, b, c, d) = users_in_group(
        nodes[0], new_id, ["Ann Sender", "Ben Leaving", "Cat Offline", "Dan Third"])
    ca = connect(nodes[0], a)
    cb = connect(nodes[1], b)  # b's only connection
    cd = connect(nodes[2], d)
    wait_online_everywhere({0: ca, 1: cb, 2: cd}, gid, {a, b, d}, gone={c})
    closing = time.monotonic()
    cb.close()
    # Every node's replica hears at once that b is online nowhere...
    wait_online_everywhere({0: ca, 2: cd}, gid, {a, d}, gone={b, c})
    sent = ca.send_message(gid, "right after b left")
    cd.wait_for("newMessage", lambda m: m["id"] == sent["id"], timeout=15)
    assert time.monotonic() - closing < debounce_ms / 1000 - 1, "setup too slow for the window"
    # ...while co-members are told only once b has stayed away for the window.
    b_offline = {"userId": b, "isOnline": False}
    assert b_offline not in cd.events("userOnline"), "announced within the window"
    cd.wait_for("userOnline", lambda p: p == b_offline, timeout=debounce_ms / 1000 + 15)
    assert time.monotonic() - closing >= debounce_ms / 1000, "announced before the window ended"

    poll("c's email", lambda: smtp.mails_to(addr(c)), coalesce + MAIL_TIMEOUT, 0.1)
    poll("b's email", lambda: smtp.mails_to(addr(b)), coalesce + MAIL_TIMEOUT, 0.1)
    wait_settled(notifier)
    mails_b = smtp.mails_to(addr(b))
    assert len(mails_b) == 1 and "right after b left" in mails_b[0]["text"], \
        [x["meta"] for x in mails_b]
    assert not smtp.mails_to(addr(d)), "d, online on node 2, got an email"
    for watcher in (ca, cd):  # one announcement each way, no more
        assert watcher.events("userOnline").count(b_offline) == 1, watcher.events("userOnline")
