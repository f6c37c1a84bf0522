"""The gateway on a real Cassandra node (issue 3): `corecast serve` with CORECAST_STORE=scylla.

- basic flow on Cassandra, and durability across a gateway restart;
- database unreachable at start: the gateway still starts, /readyz is 503, sends answer
  storage_unavailable, and it keeps retrying;
- database lost under traffic and restarted (issue 3 item 4; and in cluster mode, issue 18):
  every message acked ok is in the history afterwards, and nothing a receiver saw was unacked.

Select with `-m cassandra`. The node is the first of CORECAST_TEST_SCYLLA_NODES (default
127.0.0.1:9042); it is started with scripts/cassandra.sh if it does not answer, and every test
leaves it running (the fault test restarts it, keeping its data) because later tests use it.
Each gateway gets a fresh random keyspace.
"""

import os
import subprocess
import threading
import time
import uuid

import pytest
import socketio

from cassandra_util import REPO_ROOT, require_cassandra, scylla_nodes
from gateway_process import gateway_binary
from polling import poll
from test_cluster import redis, redis_server, start_cluster  # noqa: F401 - fixtures, by name

pytestmark = pytest.mark.cassandra

CASSANDRA_SH = REPO_ROOT / "scripts/cassandra.sh"
READY_TIMEOUT = 120.0
RECOVERY_TIMEOUT = 120.0


def _poll(what: str, fn, timeout: float, interval: float = 0.1):
    return poll(what, fn, timeout, interval)


def _cassandra(cmd: str, keep_data: bool = False, timeout: float = 300) -> subprocess.CompletedProcess:
    """Runs scripts/cassandra.sh `cmd` against the node the tests use."""
    env = dict(os.environ)
    env["CORECAST_CASSANDRA_PORT"] = scylla_nodes()[0].rsplit(":", 1)[1]
    if keep_data:
        env["CASSANDRA_KEEP_DATA"] = "1"
    return subprocess.run(["bash", str(CASSANDRA_SH), cmd], env=env, capture_output=True,
                          text=True, timeout=timeout)


def _cassandra_answers() -> bool:
    try:
        require_cassandra(timeout=3)
        return True
    except AssertionError:
        return False


def _ensure_cassandra_running():
    if _cassandra_answers():
        return
    r = _cassandra("start", keep_data=True)
    assert r.returncode == 0, f"scripts/cassandra.sh start failed:\n{r.stdout}\n{r.stderr}"
    require_cassandra()


@pytest.fixture
def cassandra():
    """A node that answers CQL, before and after the test (restarted, keeping data, if the test
    stopped it)."""
    _ensure_cassandra_running()
    yield scylla_nodes()
    _ensure_cassandra_running()


def _keyspace() -> str:
    return f"corecast_t_{uuid.uuid4().hex[:16]}"


def _ready_status(gw) -> int:
    try:
        return gw.admin("GET", "/readyz", timeout=5).status_code
    except Exception:  # noqa: BLE001 - the listener may be restarting
        return -1


def _wait_ready(gw, timeout: float = READY_TIMEOUT):
    _poll(f"{gw.internal}/readyz to answer 200", lambda: _ready_status(gw) == 200, timeout, 0.2)


def _scylla_gateway(start_gateway, nodes, **env):
    gw = start_gateway(CORECAST_STORE="scylla", CORECAST_SCYLLA_NODES=",".join(nodes),
                       CORECAST_SCYLLA_KEYSPACE=_keyspace(), **env)
    assert gw.store == "scylla", gw.store
    return gw


def _send(client, gid, text, timeout=30.0, **extra):
    return client.call("sendMessage", {"groupId": gid, "text": text, "attachments": [], **extra},
                       timeout=timeout)


# ----- (a) basic flow ----------------------------------------------------------------------


def test_basic_flow_on_cassandra_survives_restart(cassandra, start_gateway, connect, new_id):
    gw = _scylla_gateway(start_gateway, cassandra)
    _wait_ready(gw)
    a, b = new_id(), new_id()
    gw.put_user(a, name="Alice")
    gw.put_user(b, name="Bob")
    gid = f"Zürich team {new_id()}"  # stored as CQL text: unicode and spaces kept
    gw.put_group(gid, [a, b], "Team")
    ca, cb = connect(gw, a), connect(gw, b)
    for c in (ca, cb):
        assert c.call("joinGroup", {"groupId": gid}).get("ok") is True

    ack = _send(ca, gid, "hello on cassandra")
    assert ack.get("ok") is True, ack
    msg = cb.wait_for("newMessage", lambda m: m.get("id") == ack["id"])
    assert msg["text"] == "hello on cassandra" and msg["senderId"] == a and msg["groupId"] == gid
    ack2 = _send(cb, gid, "and back")
    assert ack2.get("ok") is True, ack2
    ca.wait_for("newMessage", lambda m: m.get("id") == ack2["id"])

    hist = gw.history(gid)
    assert [m["id"] for m in hist] == [ack2["id"], ack["id"]], hist  # newest first
    assert hist[1]["text"] == "hello on cassandra" and hist[1]["readBy"] == [a]  # the sender

    assert cb.call("markAsRead", {"messageId": ack["id"], "groupId": gid}) == {"ok": True}
    read = ca.wait_for("messageRead", lambda r: r["messageId"] == ack["id"])
    assert read == {"messageId": ack["id"], "userId": b, "groupId": gid}
    stored = {m["id"]: m for m in gw.history(gid)}
    assert stored[ack["id"]]["readBy"] == [a, b], stored

    ca.close()
    cb.close()
    gw.restart()
    _wait_ready(gw)
    after = gw.history(gid)
    assert [m["id"] for m in after] == [ack2["id"], ack["id"]], after
    assert after[1]["text"] == "hello on cassandra"
    assert after[1]["readBy"] == [a, b], after
    # And the restarted gateway serves the group from Cassandra.
    ca = connect(gw, a)
    assert ca.call("joinGroup", {"groupId": gid}).get("ok") is True
    ack3 = _send(ca, gid, "after restart")
    assert ack3.get("ok") is True, ack3
    assert gw.history(gid, limit=1)[0]["id"] == ack3["id"]


def test_migrate_command_creates_the_schema_the_gateway_uses(cassandra, start_gateway, connect,
                                                          new_id):
    """`corecast migrate` creates keyspace and tables; a gateway started with the migration at
    start turned off then works on them."""
    keyspace = _keyspace()
    env = dict(os.environ, CORECAST_STORE="scylla", CORECAST_SCYLLA_NODES=",".join(cassandra),
               CORECAST_SCYLLA_KEYSPACE=keyspace)
    r = subprocess.run([str(gateway_binary()), "migrate"], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, f"corecast migrate failed:\n{r.stdout}\n{r.stderr}"
    assert "schema is up to date" in r.stderr, r.stderr
    gw = start_gateway(CORECAST_STORE="scylla", CORECAST_SCYLLA_NODES=",".join(cassandra),
                       CORECAST_SCYLLA_KEYSPACE=keyspace, CORECAST_SCYLLA_MIGRATE="false")
    _wait_ready(gw)
    a = new_id()
    gw.put_user(a, name="Ann")
    gid = new_id()
    gw.put_group(gid, [a], "Solo")
    ca = connect(gw, a)
    ack = _send(ca, gid, "on a migrated keyspace")
    assert ack.get("ok") is True, ack
    assert gw.history(gid)[0]["id"] == ack["id"]


# ----- (b) database unreachable at start ---------------------------------------------------


def test_unreachable_database_at_start(start_gateway, connect, new_id):
    """Nothing listens on 127.0.0.1:1: the gateway still starts and says it listens, /readyz is
    503, a client is refused with "storage unavailable", and it keeps retrying with backoff."""
    gw = _scylla_gateway(start_gateway, ["127.0.0.1:1"])  # the listening line was printed
    r = gw.admin("GET", "/readyz")
    assert r.status_code == 503, (r.status_code, r.text)
    assert r.json().get("ready") is False, r.text
    assert gw.admin("GET", "/healthz").status_code == 200

    # A client cannot even get in: the gateway needs the user's groups from the store to
    # subscribe the connection, so the Socket.IO CONNECT is refused with a clear message
    # (shard.rs `user_groups`). So no sendMessage can be tried on this gateway; that
    # sendMessage answers storage_unavailable on a connected client is checked in the fault
    # test below, where the database goes away under live connections.
    c = connect(gw, new_id(), expect_failure=True)
    err = c.connect_error
    message = err.get("message", "") if isinstance(err, dict) else str(err)
    assert "storage unavailable" in message.lower(), err

    # A clear message naming the node, repeated: it retries with backoff, it did not give up.
    def retry_lines():
        return [l for l in gw.log_tail(400).splitlines()
                if "127.0.0.1:1" in l and "retry" in l.lower()]
    _poll("two 'retrying' log lines naming 127.0.0.1:1", lambda: len(retry_lines()) >= 2, 30, 0.2)
    assert gw.running
    assert gw.admin("GET", "/readyz").status_code == 503


# ----- (c) Cassandra stopped and restarted under traffic -----------------------------------


class Sender(threading.Thread):
    """Sends messages with acks in a loop; every message has a clientMsgId and is retried with
    the same clientMsgId until it is acked ok, as a real client would. Records every outcome."""

    def __init__(self, client, gid, run: str):
        super().__init__(daemon=True, name="sender")
        self.client, self.gid, self.run_id = client, gid, run
        self.stop_after_ok = threading.Event()
        self.lock = threading.Lock()
        self.acked: dict[str, dict] = {}       # text -> ok ack
        self.failures: list[tuple[str, object]] = []  # (text, error code or exception)
        self.ok_times: list[float] = []
        self.fail_times: list[float] = []
        self.error: BaseException | None = None

    def run(self):
        try:
            i = 0
            while True:
                text = f"{self.run_id} msg {i}"
                try:
                    ack = _send(self.client, self.gid, text, timeout=60,
                                clientMsgId=f"{self.run_id}-{i}")
                except socketio.exceptions.TimeoutError as e:
                    ack = {"ok": False, "error": {"code": f"client timeout: {e}"}}
                now = time.monotonic()
                with self.lock:
                    if ack.get("ok") is True:
                        self.acked[text] = ack
                        self.ok_times.append(now)
                        i += 1
                        if self.stop_after_ok.is_set():
                            return
                    else:
                        self.failures.append((text, ack.get("error", {}).get("code", ack)))
                        self.fail_times.append(now)
                if ack.get("ok") is not True:
                    time.sleep(0.05)  # pacing of the retry loop, not synchronisation
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def oks_since(self, t: float) -> int:
        with self.lock:
            return sum(1 for x in self.ok_times if x > t)

    def unavailable_since(self, t: float) -> int:
        with self.lock:
            return sum(1 for x, (_, code) in zip(self.fail_times, self.failures)
                       if x > t and code == "storage_unavailable")


@pytest.mark.timeout(600)
@pytest.mark.parametrize("nodes", ["one_node", "cluster"])
def test_cassandra_lost_and_restarted_under_traffic(cassandra, start_gateway, connect, new_id,
                                                     nodes, request):
    """On one node, and in cluster mode (issue 18, "the database lost"): two nodes on one
    Redis, the sender on the first and the receiver on the second; the answers are the same."""
    if nodes == "one_node":
        gw = receiver_gw = _scylla_gateway(start_gateway, cassandra)
    else:
        gw, receiver_gw = start_cluster(cassandra, request.getfixturevalue("redis"),
                                        start_gateway, n=2)
    _wait_ready(gw)
    a, b = new_id(), new_id()
    gw.put_user(a, name="Sender")
    gw.put_user(b, name="Receiver")
    gid = new_id()
    gw.put_group(gid, [a, b], "Fault")
    ca, cb = connect(gw, a), connect(receiver_gw, b)
    for c in (ca, cb):
        assert c.call("joinGroup", {"groupId": gid}).get("ok") is True

    sender = Sender(ca, gid, f"run-{uuid.uuid4().hex[:8]}")
    sender.start()
    _poll("20 acked sends before the fault", lambda: sender.oks_since(0) >= 20, 60)

    t_stop = time.monotonic()
    r = _cassandra("stop")
    assert r.returncode == 0, f"cassandra.sh stop failed:\n{r.stdout}\n{r.stderr}"
    try:
        assert not _cassandra_answers(), "Cassandra still answers after stop"
        _poll("a storage_unavailable answer while Cassandra is down",
              lambda: sender.unavailable_since(t_stop) >= 1 or sender.error, 60)
        assert sender.error is None, repr(sender.error)
        _poll("/readyz 503 while Cassandra is down", lambda: _ready_status(gw) == 503, 60)
        # Without an ack the failure arrives as an `error` event; the probe must never be
        # broadcast or stored (checked with the history below).
        cb.emit("sendMessage", {"groupId": gid, "text": "probe while down", "attachments": []})
        err = cb.wait_for("error", timeout=30)
        assert err.get("code") == "storage_unavailable", err
        assert gw.running and receiver_gw.running, "a gateway died when Cassandra went away"
        t_down_seen = time.monotonic()
    finally:
        r = _cassandra("start", keep_data=True)
    assert r.returncode == 0, f"CASSANDRA_KEEP_DATA=1 cassandra.sh start failed:\n{r.stdout}\n{r.stderr}"

    _poll(f"10 acked sends after Cassandra came back (driver reconnects by itself)",
          lambda: sender.oks_since(t_down_seen) >= 10 or sender.error, RECOVERY_TIMEOUT, 0.2)
    assert sender.error is None, repr(sender.error)
    _poll("/readyz 200 again", lambda: _ready_status(gw) == 200, 60)
    sender.stop_after_ok.set()
    sender.join(120)
    assert not sender.is_alive(), "sender did not finish"
    assert sender.error is None, repr(sender.error)

    acked = dict(sender.acked)
    acked_ids = {ack["id"]: text for text, ack in acked.items()}
    codes = {code for _, code in sender.failures}
    print(f"fault test: {len(acked)} acked ok, {len(sender.failures)} failed attempts {codes}")
    assert "storage_unavailable" in codes, codes

    # Order is per group and the last acked message is the newest: once the receiver has it,
    # it has everything it will ever get.
    last_id = acked[max(acked, key=lambda t: int(t.rsplit(" ", 1)[1]))]["id"]
    cb.wait_for("newMessage", lambda m: m.get("id") == last_id, timeout=30)
    received = cb.events("newMessage")
    unacked_seen = [m for m in received if m["id"] not in acked_ids]
    assert not unacked_seen, f"receiver saw messages whose send was never acked ok: {unacked_seen[:5]}"
    for m in received:
        assert m["text"] == acked_ids[m["id"]], m

    history = []
    before = None
    while True:
        page = gw.history(gid, limit=100, before=before)
        history += page
        if len(page) < 100:
            break
        before = page[-1]["id"]
    hist_ids = {m["id"] for m in history}
    missing = [(t, ack["id"]) for t, ack in acked.items() if ack["id"] not in hist_ids]
    assert not missing, f"{len(missing)} acked messages are not in the history: {missing[:5]}"
    texts = [m["text"] for m in history]
    dupes = sorted({t for t in texts if texts.count(t) > 1})
    assert not dupes, f"messages stored twice (same clientMsgId resent): {dupes[:5]}"
    extra = [m for m in history if m["id"] not in acked_ids]
    assert not extra, f"history holds messages never acked ok: {extra[:5]}"
    assert len(received) == len({m["id"] for m in received}), "receiver got a message twice"
    assert gw.running
