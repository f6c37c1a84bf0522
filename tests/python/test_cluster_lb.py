"""No sticky sessions (issue 18): a long-polling session's requests may reach any node, and
the node that gets a request for another node's session forwards it there, its upgrade to
WebSocket included (gateway/src/polling.rs, "Forwarding by sid").

- By hand: a session opened on one node is used through the two others, and once its node is
  killed, another node answers its requests "Session ID unknown", as for a session that ended.
- Behind HAProxy (Debian's `haproxy`) balancing round-robin with no affinity of any kind, in
  front of three nodes, with stock python-socketio clients: in their default configuration
  (polling first, then the upgrade) and polling only. In `mode http` HAProxy picks a node for
  every request, so each session's GETs and POSTs go round the three nodes; in `mode tcp` it
  picks one per TCP connection. Every member gets every acknowledged message once, in id order.

Three `corecast serve` processes on one Redis and one Cassandra, as in test_cluster.py (whose
fixtures these tests share).
"""

import shutil
import socket
import subprocess

import pytest

from polling import poll
from polling_client import PollingClient
from test_cluster import (  # noqa: F401 - fixtures, used by name
    NODES, _flood, _free_port, _messages, _metric, cassandra, cluster, connect, redis,
    redis_server)

pytestmark = pytest.mark.cassandra

HAPROXY_CONFIG = """\
global
    maxconn 4096
defaults
    mode {mode}
    balance roundrobin
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h
frontend chat
    bind 127.0.0.1:{port}
    default_backend nodes
backend nodes
{servers}
"""


def _forwarded(cluster) -> float:
    return sum(_metric(gw, "corecast_cluster_forwarded_connections_total") for gw in cluster)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def haproxy(tmp_path, cluster):
    """haproxy(mode) -> "127.0.0.1:port" of an HAProxy in `mode` (http or tcp), round-robin
    over the three nodes."""
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    procs = []

    def start(mode: str) -> str:
        port = _free_port()
        servers = "\n".join(f"    server node{i} {gw.public}" for i, gw in enumerate(cluster))
        config = tmp_path / f"haproxy-{mode}.cfg"
        config.write_text(HAPROXY_CONFIG.format(mode=mode, port=port, servers=servers))
        log = open(tmp_path / f"haproxy-{mode}.log", "wb")
        # -db: in the foreground, so that it stops with the test.
        procs.append(subprocess.Popen([binary, "-db", "-f", str(config)], stdout=log,
                                      stderr=subprocess.STDOUT))
        poll(f"haproxy ({mode}) to listen on {port}", lambda: _accepts(port), 10, 0.05)
        return f"127.0.0.1:{port}"

    yield start
    for p in procs:
        p.terminate()
        p.wait(10)


class Through:
    """What the `connect` fixture needs of a gateway, with the load balancer's address: the
    clients dial the balancer, the tokens are the cluster's."""

    def __init__(self, address: str, gateway):
        self.url = f"http://{address}"
        self.token = gateway.token


def test_a_session_is_served_through_every_node_and_unknown_once_its_node_is_gone(
        cluster, new_id):
    user, other = new_id(), new_id()
    for u in (user, other):
        cluster[0].put_user(u)
    gid = f"g-{new_id()}"
    cluster[0].put_group(gid, [user, other])
    # Opened on node 0; its CONNECT goes through node 1, its GETs through node 2.
    c = PollingClient(cluster[0].public)
    home = c.base
    c.base = f"http://{cluster[1].public}/socket.io/"
    c.post("40{\"token\":\"%s\"}" % cluster[0].token(user))
    c.base = f"http://{cluster[2].public}/socket.io/"
    connected = c.wait(lambda p: p.startswith("40") or p.startswith("44"))
    assert connected.startswith("40{"), connected
    # A message from a member on node 1 reaches it, and its own message through node 1 is
    # acked there.
    c.base = f"http://{cluster[1].public}/socket.io/"
    ack = c.call("sendMessage", {"groupId": gid, "text": "through node 1", "attachments": []})
    assert ack.get("ok") is True, ack
    assert _forwarded(cluster) >= 3
    # Node 0 dies; once the others see it gone, its session is unknown to them.
    c.base = home
    cluster[0].kill9()
    for gw in cluster[1:]:
        poll("the survivors to see node 0 gone",
             lambda gw=gw: _metric(gw, "corecast_cluster_nodes") == NODES - 1, 60, 0.2)
    for gw in cluster[1:]:
        c.base = f"http://{gw.public}/socket.io/"
        r = c.get_raw()
        assert r.status_code == 400, (r.status_code, r.text)
        assert r.json() == {"code": 1, "message": "Session ID unknown"}


@pytest.mark.parametrize("mode", ["http", "tcp"])
def test_stock_clients_behind_a_round_robin_balancer_get_every_message_once_in_order(
        cluster, haproxy, connect, new_id, mode):
    lb = Through(haproxy(mode), cluster[0])
    users = [new_id() for _ in range(6)]
    for u in users:
        cluster[0].put_user(u)
    gid = f"g-{new_id()}"
    cluster[0].put_group(gid, users)
    # Half in the default configuration (polling, then the upgrade), half polling only.
    clients = [connect(lb, u, transports=None if k % 2 == 0 else ["polling"])
               for k, u in enumerate(users)]
    assert [c.sio.transport() for c in clients[1::2]] == ["polling"] * 3
    senders = clients[:3]  # two upgraded-or-upgrading, one polling only
    per_sender = 10
    acks = _flood(senders, gid, per_sender)
    acked = sorted(int(a["id"]) for a in acks)
    assert len(set(acked)) == len(senders) * per_sender, "duplicate ids"
    marker = senders[1].send_message(gid, "marker")
    expected = [str(i) for i in acked] + [marker["id"]]
    for k, c in enumerate(clients):
        c.wait_for("newMessage", lambda m: m["id"] == marker["id"], timeout=30)
        got = [m["id"] for m in _messages(c, gid)]
        assert got == expected, (
            f"member {k} ({c.sio.transport()}): {len(got)} messages, expected {len(expected)}; "
            f"duplicates: {len(got) - len(set(got))}; missing: "
            f"{sorted(set(expected) - set(got))[:5]}")
    # The default clients upgraded, wherever their upgrade request landed.
    poll("the default clients to upgrade",
         lambda: [c.sio.transport() for c in clients[0::2]] == ["websocket"] * 3, 15, 0.1)
    if mode == "http":
        # A node per request: most of each session's requests went through another node.
        assert _forwarded(cluster) > len(clients), _forwarded(cluster)
