"""Presence across gateway nodes (issue 18, cluster mode): a user with a tab on one node and a
phone on another is online until both close, and co-members on a third node hear `userOnline`
once for the first connection and once for the last; the users of a node killed with SIGKILL
go offline on the others within the configured time, except those connected elsewhere too.

Three `corecast serve` processes on one Redis and one Cassandra, as in test_cluster.py (whose
fixtures these tests share), with a short presence debounce and a short dead-node time.
"""

import pytest

from polling import poll
from test_cluster import (  # noqa: F401 - fixtures, used by name
    _metric, cassandra, connect, redis, redis_server, start_cluster)

pytestmark = pytest.mark.cassandra

DEAD_AFTER_SECS = 3


@pytest.fixture
def cluster(cassandra, redis, start_gateway):  # noqa: F811 - the fixtures imported above
    """Three nodes; presence debounced 200 ms, a node dead after DEAD_AFTER_SECS without
    refreshing its registration."""
    return start_cluster(cassandra, redis, start_gateway, CORECAST_PRESENCE_DEBOUNCE_MS=200,
                         CORECAST_CLUSTER_DEAD_AFTER_SECS=DEAD_AFTER_SECS)


def presence_of(client, uid):
    return [p["isOnline"] for p in client.events("userOnline") if p.get("userId") == uid]


def test_a_user_on_two_nodes_is_online_until_both_close_announced_once_each_way(
        cluster, connect, new_id):  # noqa: F811
    watcher, user = new_id(), new_id()
    admin = cluster[0]
    for u in (watcher, user):
        admin.put_user(u)
    gid = f"g-{new_id()}"
    admin.put_group(gid, [watcher, user])
    w = connect(cluster[0], watcher)
    tab = connect(cluster[1], user)
    w.wait_for("userOnline", lambda p: p == {"userId": user, "isOnline": True}, timeout=15)
    phone = connect(cluster[2], user)
    # The phone's arrival changes nothing; a message sent after it, and received after any
    # announcement it could have caused, marks the moment.
    first = phone.send_message(gid, "from the phone")
    w.wait_for("newMessage", lambda m: m["id"] == first["id"], timeout=15)
    tab.close()
    second = phone.send_message(gid, "the tab is closed")
    w.wait_for("newMessage", lambda m: m["id"] == second["id"], timeout=15)
    assert presence_of(w, user) == [True], "still online on node 2"
    phone.close()
    w.wait_for("userOnline", lambda p: p == {"userId": user, "isOnline": False}, timeout=15)
    assert presence_of(w, user) == [True, False]
    # The stored presence says so too (read through another node's admin API).
    poll("the stored presence to say offline",
         lambda: cluster[1].admin("GET", f"/api/users/{user}").json().get("online") is False,
         10, 0.1)


def test_a_killed_node_s_users_go_offline_on_the_other_nodes(cluster, connect, new_id):  # noqa: F811
    watcher, only_there, also_elsewhere = new_id(), new_id(), new_id()
    admin = cluster[0]
    for u in (watcher, only_there, also_elsewhere):
        admin.put_user(u)
    gid = f"g-{new_id()}"
    admin.put_group(gid, [watcher, only_there, also_elsewhere])
    w = connect(cluster[0], watcher)
    connect(cluster[2], only_there)
    connect(cluster[2], also_elsewhere)
    elsewhere = connect(cluster[1], also_elsewhere)
    for u in (only_there, also_elsewhere):
        w.wait_for("userOnline", lambda p, u=u: p == {"userId": u, "isOnline": True}, timeout=15)
    cluster[2].kill9()
    # Gone once its registration expires (DEAD_AFTER_SECS) and two checks miss it.
    w.wait_for("userOnline", lambda p: p == {"userId": only_there, "isOnline": False},
               timeout=DEAD_AFTER_SECS + 12)
    # The reap that announced it decided for every user of node 2 at once: the user who is
    # also on node 1 is still online, and says so by sending, once both survivors agree on
    # who is alive (and so on the group's owner).
    for i in (0, 1):
        poll(f"node-{i} to see node-2 gone",
             lambda gw=cluster[i]: _metric(gw, "corecast_cluster_nodes") == 2, 15, 0.1)
    ack = elsewhere.send_message(gid, "still here")
    w.wait_for("newMessage", lambda m: m["id"] == ack["id"], timeout=15)
    assert presence_of(w, also_elsewhere) == [True]
    assert presence_of(w, only_there) == [True, False]


def test_a_node_restarted_at_once_takes_its_last_run_s_users_offline(cluster, connect, new_id):  # noqa: F811
    """A node killed with SIGKILL and started again under its id before the others saw it
    gone: the new run takes off what the last one left in Redis (while its store may still be
    connecting), so its user who did not come back goes offline on the other nodes."""
    watcher, only_there = new_id(), new_id()
    admin = cluster[0]
    for u in (watcher, only_there):
        admin.put_user(u)
    gid = f"g-{new_id()}"
    admin.put_group(gid, [watcher, only_there])
    w = connect(cluster[0], watcher)
    connect(cluster[2], only_there)
    w.wait_for("userOnline", lambda p: p == {"userId": only_there, "isOnline": True}, timeout=15)
    cluster[2].kill9()
    cluster[2].start()
    w.wait_for("userOnline", lambda p: p == {"userId": only_there, "isOnline": False},
               timeout=30)
    assert presence_of(w, only_there) == [True, False]
