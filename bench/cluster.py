#!/usr/bin/env python3
"""Cluster mode measured (issue 18, item 7): three nodes against one, on one machine.

Three configurations of the same gateway binary, all on the ScyllaDB/Cassandra store (cluster
mode refuses the embedded one, so the fair one-node comparison is one node on the same store):

- `one`: one node, `CORECAST_STORE=scylla`, no `CORECAST_CLUSTER`;
- `one-bus`: the same node with `CORECAST_CLUSTER` set: it owns every group and still publishes
  every group event on Redis, and gets it back and drops it (what the bus costs by itself);
- `three`: three nodes on one Redis, the loadgen's connections spread over them with
  `--target a,b,c` (user i on node i mod 3, so every group of 10 has members on every node and
  most senders are not on the group's owner node).

The fan-out scenario of bench/compare.py (1,000 connections in groups of 10, open-loop sends)
runs at rising rates; at each rate every configuration still in the sweep runs twice,
interleaved (`one one-bus three three one-bus one`: the second run of a pair tends to be the
slower one, so each goes first once), each run on fresh nodes (a fresh keyspace is made once
per invocation; each run gets users and groups of its own in it). A configuration leaves the
sweep after a rate where neither of its runs held p99 < 50 ms with nothing lost (a run that
failed on p99 alone is run once more, as in compare.py). Over each run's send phase it reads,
besides the loadgen's report: every node's CPU time per thread group (shards, store, bus,
other; /proc/PID/task/*/stat), every node's corecast_bus_* and corecast_deliveries_total
counters (/metrics), Redis's CPU time (/proc/PID/stat and `INFO cpu`) and the Cassandra
process's (shared with other sessions: context, not a figure of ours), the load average
before and after, and the machine check of compare.py before the run.

Results: bench/results/cluster-CONFIG-RATE-rN.json (the loadgen's report with a `cluster`
section added), bench/results/cluster-summary.json, and the generated table in
docs/scaling.md (between its markers; `--no-doc` leaves it alone). `--quick`: one rate,
3-second runs, one round, results in target/bench-cluster-quick/, docs untouched (a check of
this script, not a measurement). Run via `bench/compare.sh --cluster [flags]`.

Needs Debian's redis-server (started here on its own port with --save '' --appendonly no)
and a Cassandra or ScyllaDB node answering CQL on --scylla (scripts/cassandra.sh start; it is
used, never started or stopped, here). Every port is below 32768.
"""

import argparse
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "cassandra"))
import compare  # noqa: E402
import cql_ping  # noqa: E402
from compare import ADMIN, P99_BOUND_MS, ROOT, SECRET, fmt, g, held, machine_check, only_slow  # noqa: E402

RESULTS = os.path.join(ROOT, "bench", "results")
QUICK_RESULTS = os.path.join(ROOT, "target", "bench-cluster-quick")
DOC = os.path.join(ROOT, "docs", "scaling.md")
BEGIN = "<!-- cluster.py: begin (generated, do not edit by hand) -->"
END = "<!-- cluster.py: end -->"
CONFIGS = ["one", "one-bus", "three"]
TITLES = {"one": "1 node", "one-bus": "1 node + bus", "three": "3 nodes"}
NODES = {"one": 1, "one-bus": 1, "three": 3}
# Ports (all below 32768, under the kernel's ephemeral range): Redis, then node i's public
# port PORT_BASE + 10 + 2i and internal port one above it.
PORT_BASE = 26300
RATES = [500, 1000, 1500, 2000, 3000, 5000, 7500]
CONNS, GROUP_SIZE = 1000, 10
HZ = os.sysconf("SC_CLK_TCK")


def log(msg):
    print(f"[cluster] {msg}", file=sys.stderr, flush=True)


def port_free(port):
    """Nothing listens on it (SO_REUSEADDR, as a listener binds: the last run's connections in
    TIME_WAIT do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def proc_cpu_s(pid):
    """utime + stime of a process (all its threads), seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def thread_group(name):
    """Which part of the gateway a thread belongs to, by the name it was given."""
    if name.startswith("shard-"):
        return "shards"
    if name.startswith("store"):
        return "store"
    if name.startswith("cc-bus"):
        return "bus"
    return "other"


def threads_cpu_s(pid):
    """CPU seconds per thread group of a gateway process (threads that exited are not
    counted: the gateway's threads live as long as it does)."""
    out = {}
    for task in glob.glob(f"/proc/{pid}/task/*"):
        try:
            with open(f"{task}/comm") as f:
                name = f.read().strip()
            with open(f"{task}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        grp = thread_group(name)
        out[grp] = out.get(grp, 0.0) + (int(fields[11]) + int(fields[12])) / HZ
    return out


def loadavg():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def cassandra_pid():
    """The local Cassandra's JVM (read only: it is shared, never signalled here)."""
    for d in glob.glob("/proc/[0-9]*"):
        try:
            with open(f"{d}/cmdline", "rb") as f:
                if b"CassandraDaemon" in f.read():
                    return int(os.path.basename(d))
        except OSError:
            continue
    return None


class Redis:
    """A redis-server of this run's own on 127.0.0.1:`port`, nothing persisted."""

    def __init__(self, port, data):
        exe = shutil.which("redis-server")
        if not exe:
            raise SystemExit("redis-server not found: install Debian's redis-server (apt-get install redis-server)")
        if not port_free(port):
            raise SystemExit(f"port {port} is taken: pick another --port-base")
        self.port = port
        self.url = f"redis://127.0.0.1:{port}"
        self.version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.split()[2]
        self.proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", data],
                                     stdout=open(os.path.join(data, "redis.log"), "w"), stderr=subprocess.STDOUT)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                if self.command("PING").startswith("+PONG"):
                    return
            except OSError:
                time.sleep(0.05)
        raise SystemExit(f"redis-server on port {port} did not answer PING within 10 s")

    def command(self, *args):
        """One command in RESP, its whole answer as text (enough for PING and INFO)."""
        req = f"*{len(args)}\r\n" + "".join(f"${len(a)}\r\n{a}\r\n" for a in args)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(req.encode())
            buf = s.recv(65536)
            if buf.startswith(b"$"):
                head, _, rest = buf.partition(b"\r\n")
                want = int(head[1:])
                while len(rest) < want:
                    rest += s.recv(65536)
                return rest[:want].decode()
            return buf.decode()

    def info_cpu_s(self):
        """Redis's own account of its CPU (getrusage: user + system), microsecond resolution
        where /proc has 10 ms ticks."""
        kv = dict(line.split(":", 1) for line in self.command("INFO", "cpu").splitlines() if ":" in line)
        return float(kv["used_cpu_sys"]) + float(kv["used_cpu_user"])

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class Node:
    """One `corecast serve` on the shared store, in cluster mode when `cluster_url` is set."""

    def __init__(self, binary, index, keyspace, scylla, cluster_url, log_path):
        self.port = PORT_BASE + 10 + 2 * index
        self.internal = self.port + 1
        for p in (self.port, self.internal):
            if not port_free(p):
                raise RuntimeError(f"port {p} is taken")
        env = {k: v for k, v in os.environ.items() if not k.startswith("CORECAST_")}
        env.update(
            CORECAST_LISTEN=f"127.0.0.1:{self.port}",
            CORECAST_INTERNAL_LISTEN=f"127.0.0.1:{self.internal}",
            CORECAST_JWT_SECRET=SECRET,
            CORECAST_ADMIN_TOKEN=ADMIN,
            CORECAST_SHARDS="2",
            CORECAST_STORE="scylla",
            CORECAST_SCYLLA_NODES=scylla,
            CORECAST_SCYLLA_KEYSPACE=keyspace,
            # As in compare.py: the limits are for people, a loadgen connection sends far more,
            # and one host opens every connection.
            CORECAST_RATE_LIMIT_PER_MIN="0",
            CORECAST_EVENT_RATE_PER_SEC="0",
            CORECAST_MAX_PENDING_PER_IP="0",
            CORECAST_DRAIN_SECS="0",
            RUST_LOG="warn",
        )
        if cluster_url:
            env.update(CORECAST_CLUSTER=cluster_url, CORECAST_NODE_ID=f"bench-{index}")
        self.log_path = log_path
        with open(log_path, "w") as log_file:
            self.proc = subprocess.Popen([binary, "serve"], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                         stderr=log_file, text=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"node {index} exited before listening (exit {self.proc.wait()}); "
                                   f"its log: {os.path.relpath(log_path, ROOT)}")
            if " listening " in f" {line}":
                subprocess.Popen(["cat"], stdin=self.proc.stdout, stdout=subprocess.DEVNULL)
                break
        else:
            raise RuntimeError(f"node {index} did not print its listening line within 60 s")
        self.wait(f"node {index} /readyz", lambda: self.get("/readyz")[0] == 200, 120)

    @property
    def pid(self):
        return self.proc.pid

    def get(self, path):
        req = urllib.request.Request(f"http://127.0.0.1:{self.internal}{path}",
                                     headers={"Authorization": f"Bearer {ADMIN}"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.read().decode()
        except OSError:
            return None, ""

    def counters(self):
        """Counter and gauge samples without labels, by name."""
        out = {}
        for line in self.get("/metrics")[1].splitlines():
            if line.startswith("corecast_") and "{" not in line:
                name, _, v = line.partition(" ")
                try:
                    out[name] = float(v)
                except ValueError:
                    pass
        return out

    @staticmethod
    def wait(what, pred, timeout):
        deadline = time.time() + timeout
        while not pred():
            if time.time() > deadline:
                raise RuntimeError(f"{what}: not within {timeout} s")
            time.sleep(0.1)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# The counters read from every node at both ends of the send phase.
COUNTERS = ["corecast_deliveries_total", "corecast_messages_in_total", "corecast_bus_published_total",
            "corecast_bus_received_total", "corecast_bus_forwarded_total", "corecast_bus_publish_failures_total"]


def snapshot(nodes, redis, cass):
    snap = {"t": time.time(), "nodes": []}
    for n in nodes:
        c = n.counters()
        snap["nodes"].append({"cpu_s": proc_cpu_s(n.pid), "threads_s": threads_cpu_s(n.pid),
                              "counters": {k: c.get(k, 0.0) for k in COUNTERS}})
    if redis:
        snap["redis_cpu_s"] = proc_cpu_s(redis.proc.pid)
        snap["redis_info_cpu_s"] = redis.info_cpu_s()
    if cass:
        try:
            snap["cassandra_cpu_s"] = proc_cpu_s(cass)
        except OSError:
            pass
    return snap


def between(a, b, deliveries, messages):
    """What the send phase cost, from two snapshots: CPU per delivery over all nodes, per
    thread group, bus messages per group message, Redis CPU per bus message."""
    nodes = []
    for x, y in zip(a["nodes"], b["nodes"]):
        nodes.append({
            "cpu_s": round(y["cpu_s"] - x["cpu_s"], 3),
            "threads_s": {k: round(v - x["threads_s"].get(k, 0.0), 3) for k, v in y["threads_s"].items()},
            "counters": {k: y["counters"][k] - x["counters"][k] for k in COUNTERS},
        })
    tot = {k: sum(n["counters"][k] for n in nodes) for k in COUNTERS}
    cpu = sum(n["cpu_s"] for n in nodes)
    groups = {}
    for n in nodes:
        for k, v in n["threads_s"].items():
            groups[k] = groups.get(k, 0.0) + v
    published, received = tot["corecast_bus_published_total"], tot["corecast_bus_received_total"]
    out = {
        "seconds": round(b["t"] - a["t"], 3),
        "nodes": nodes,
        "totals": tot,
        "cpu_s": round(cpu, 3),
        "cpu_us_per_delivery": cpu * 1e6 / deliveries if deliveries else None,
        "threads_us_per_delivery": {k: v * 1e6 / deliveries for k, v in groups.items()} if deliveries else None,
        "bus_published_per_message": published / messages if messages else None,
        "bus_received_per_message": received / messages if messages else None,
        "bus_thread_us_per_bus_message": (groups.get("bus", 0.0) * 1e6 / (published + received)
                                          if published + received else None),
    }
    if "redis_cpu_s" in a:
        out["redis_cpu_s"] = round(b["redis_cpu_s"] - a["redis_cpu_s"], 3)
        out["redis_info_cpu_s"] = round(b["redis_info_cpu_s"] - a["redis_info_cpu_s"], 4)
        if published:
            out["redis_us_per_published"] = out["redis_info_cpu_s"] * 1e6 / published
            out["redis_us_per_bus_message"] = out["redis_info_cpu_s"] * 1e6 / (published + received)
    if "cassandra_cpu_s" in a and "cassandra_cpu_s" in b:
        out["cassandra_cpu_s"] = round(b["cassandra_cpu_s"] - a["cassandra_cpu_s"], 3)
        out["cassandra_us_per_message"] = out["cassandra_cpu_s"] * 1e6 / messages if messages else None
    return out


class Bench:
    def __init__(self, a, redis, keyspace, results, p):
        self.a = a
        self.redis = redis
        self.keyspace = keyspace
        self.results = results
        self.p = p
        self.cass = cassandra_pid()
        self.runs = 0

    def run(self, config, rate, rnd):
        """Fresh nodes of `config`, one loadgen fan-out run at `rate` against them."""
        name = f"cluster-{config}-{rate}-r{rnd}"
        out = os.path.join(self.results, f"{name}.json")
        check = machine_check()
        load_before = loadavg()
        nodes = []
        # Each run's users and groups are its own, in the invocation's keyspace.
        base = 1 + self.runs * 10 * CONNS
        self.runs += 1
        try:
            for i in range(NODES[config]):
                # One at a time: the first one makes the schema (once per keyspace).
                nodes.append(Node(self.a.bin, i, self.keyspace, self.a.scylla,
                                  self.redis.url if config != "one" else None,
                                  os.path.join(self.results, f"{name}.node{i}.log")))
            if config != "one":
                for i, n in enumerate(nodes):
                    n.wait(f"node {i} to see {len(nodes)} live nodes",
                           lambda n=n: n.counters().get("corecast_cluster_nodes") == len(nodes), 30)
            cmd = [self.a.loadgen,
                   "--target", ",".join(f"127.0.0.1:{n.port}" for n in nodes),
                   "--admin", f"127.0.0.1:{nodes[0].internal}",
                   "--jwt-secret", SECRET, "--admin-token", ADMIN,
                   "--server-pid", str(nodes[0].pid),
                   "--label", f"{config}:{rate}",
                   "--json", out,
                   "--scenario", "fanout", "--conns", str(CONNS), "--group-size", str(GROUP_SIZE),
                   "--rate", str(rate), "--duration", str(self.p["duration"]), "--warmup", str(self.p["warmup"]),
                   "--drain", str(self.p["drain"]),
                   "--user-base", str(base), "--group-base", str(base), "--group-prefix", "bench-"]
            log("$ " + " ".join(cmd))
            lg = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            snaps, stderr = {}, []
            for line in lg.stderr:
                stderr.append(line)
                if "connect round 0:" in line and "start" not in snaps:
                    # The loadgen settles for 1 s after its connect round, then starts the send
                    # phase (its own send_start mark); 20 ms later the first send is due; the
                    # phase ends after warm-up, duration and drain.
                    time.sleep(1.0)
                    snaps["start"] = snapshot(nodes, self.redis if config != "one" else None, self.cass)
                    time.sleep(0.02 + self.p["warmup"] + self.p["duration"] + self.p["drain"])
                    snaps["end"] = snapshot(nodes, self.redis if config != "one" else None, self.cass)
            stdout = lg.stdout.read()
            code = lg.wait(900)
            with open(out.replace(".json", ".loadgen.log"), "w") as f:
                f.write("".join(stderr) + stdout)
            if code != 0 or not os.path.exists(out):
                rep = {"failed": f"loadgen exited with {code}", "command": " ".join(cmd)}
            else:
                with open(out) as f:
                    rep = json.load(f)
            exited = [i for i, n in enumerate(nodes) if n.proc.poll() is not None]
            if exited:
                rep["server_exited"] = exited
        except RuntimeError as e:
            log(f"{config} at {rate}: {e}")
            rep, snaps = {"failed": str(e)}, {}
        finally:
            for n in reversed(nodes):
                n.stop()
        s = rep.get("send") or {}
        cl = {"config": config, "rate": rate, "nodes": NODES[config], "round": rnd, "machine_check": check,
              "loadavg_before": load_before, "loadavg_after": loadavg(), "keyspace": self.keyspace,
              "redis": self.redis.version if config != "one" else None}
        if "start" in snaps and "end" in snaps:
            cl.update(between(snaps["start"], snaps["end"], s.get("deliveries"), s.get("sent")))
            # The loadgen's own figure for node 0, over its exact send phase: how far the
            # snapshots' window (timed from its log) is from it.
            cl["node0_cpu_s_loadgen"] = g(rep, "server", "cpu_s_send")
        rep["cluster"] = cl
        if "failed" not in rep or os.path.exists(out):
            with open(out, "w") as f:
                json.dump(rep, f, indent=1)
        lat = g(rep, "send", "latency") or {}
        log(f"{config} at {rate}/s run {rnd}: p50 {lat.get('p50_ms')} p99 {lat.get('p99_ms')} ms, lost "
            f"{s.get('lost')}, errors {rep.get('errors_total')}, CPU {fmt(cl.get('cpu_us_per_delivery'), '', 1)} "
            f"µs/delivery, Redis {fmt(cl.get('redis_us_per_published'), '', 1)} µs/publish, "
            f"load {cl['loadavg_after']}")
        return rep

    def run_held(self, config, rate, rnd):
        rep = self.run(config, rate, rnd)
        if compare.RETRY_SLOW and only_slow(rep, P99_BOUND_MS):
            log(f"{config}: p99 {rep['send']['latency']['p99_ms']:.1f} ms at {rate}/s; running it once more")
            first = rep["send"]["latency"]["p99_ms"]
            rep = self.run(config, rate, rnd)
            rep["first_try_p99_ms"] = first
        return rep


def plan(quick):
    if quick:
        return dict(rates=[500], rounds=1, duration=3, warmup=1, drain=1)
    return dict(rates=RATES, rounds=2, duration=8, warmup=2, drain=2)


def summarize(runs, meta, p, configs):
    """The generated table: per configuration, the rate held in every run and in one, p50/p99
    and CPU per delivery at each rate every configuration ran, bus messages and Redis CPU."""
    by = {}
    for r in runs:
        cl = r.get("cluster", {})
        by.setdefault((cl.get("config"), cl.get("rate")), []).append(r)

    def cell(rs, fn, digits=1):
        vals = [fn(r) for r in rs]
        return ", ".join(fmt(v, "", digits) for v in vals) if vals else "–"

    def held_rate(config, every):
        best = None
        for rate in p["rates"]:
            rs = by.get((config, rate), [])
            ok = [held(r) for r in rs]
            if rs and (all(ok) if every else any(ok)):
                best = rate * GROUP_SIZE
            else:
                break
        return best

    lines = [
        f"Run {meta['date']} on {meta['cores']} cores ({meta['cpu']}), kernel {meta['kernel']}; corecast "
        f"{meta['corecast_commit']} ({meta['bin']}); redis-server {meta['redis']}; Cassandra "
        f"{meta['cassandra']} on the same machine (shared with other sessions).",
        f"Command: `{meta['command']}`. Everything (nodes, Redis, Cassandra, the loadgen) shares the "
        "machine's 2 cores: three nodes here show what the cluster costs, not how it scales.",
        "",
        "| measure | " + " | ".join(TITLES[c] for c in configs) + " |",
        "|---|" + "---:|" * len(configs),
        "| deliveries/s held at p99 < 50 ms in both runs (in one) | "
        + " | ".join(f"{fmt(held_rate(c, True))} ({fmt(held_rate(c, False))})" for c in configs) + " |",
    ]
    for rate in p["rates"]:
        if not all(by.get((c, rate)) for c in configs):
            continue
        rs = {c: by[(c, rate)] for c in configs}
        d = f"{rate * GROUP_SIZE:,}/s"
        lines.append(f"| {d}: delivery p50 ms | " + " | ".join(
            cell(rs[c], lambda r: g(r, "send", "latency", "p50_ms"), 2) for c in configs) + " |")
        lines.append(f"| {d}: delivery p99 ms | " + " | ".join(
            cell(rs[c], lambda r: g(r, "send", "latency", "p99_ms"), 2) for c in configs) + " |")
        lines.append(f"| {d}: CPU µs per delivery, all nodes | " + " | ".join(
            cell(rs[c], lambda r: g(r, "cluster", "cpu_us_per_delivery")) for c in configs) + " |")
        lines.append(f"| {d}: of which bus threads | " + " | ".join(
            cell(rs[c], lambda r: g(r, "cluster", "threads_us_per_delivery", "bus"), 2) for c in configs) + " |")
        lines.append(f"| {d}: bus publishes per group message | " + " | ".join(
            cell(rs[c], lambda r: g(r, "cluster", "bus_published_per_message"), 2) for c in configs) + " |")
        lines.append(f"| {d}: bus messages received per group message | " + " | ".join(
            cell(rs[c], lambda r: g(r, "cluster", "bus_received_per_message"), 2) for c in configs) + " |")
        lines.append(f"| {d}: Redis CPU µs per publish | " + " | ".join(
            cell(rs[c], lambda r: g(r, "cluster", "redis_us_per_published"), 2) for c in configs) + " |")
        lines.append(f"| {d}: Cassandra CPU µs per message (shared) | " + " | ".join(
            cell(rs[c], lambda r: g(r, "cluster", "cassandra_us_per_message"), 0) for c in configs) + " |")
        lines.append(f"| {d}: load average before the run (1 min) | " + " | ".join(
            cell(rs[c], lambda r: (g(r, "cluster", "loadavg_before") or [None])[0]) for c in configs) + " |")
    checks = [g(r, "cluster", "machine_check") for r in runs if g(r, "cluster", "machine_check")]
    lines += [
        "",
        f"Each cell lists the runs in the order they ran ({p['rounds']} per configuration and rate, "
        f"interleaved `{' '.join(configs)}` then the reverse; a rate that failed on p99 alone is run "
        "once more and only the second run is listed). 1,000 connections in groups of 10, "
        f"{p['duration']} s measured after {p['warmup']} s of warm-up, 2 shards per node, limits off; CPU "
        "is user + system time of every node's process over the send phase, divided by the deliveries "
        "the loadgen counted; Redis CPU from its `INFO cpu` over the same window. Raw results: "
        "`bench/results/cluster-*.json`.",
    ]
    if checks:
        sha = [c["sha256_256mib_s"] for c in checks]
        rtt = [c["loopback_round_trip_us"] for c in checks]
        la = [c["loadavg_1m"] for c in checks]
        lines += ["", "Machine check before each run (compare.py's): sha256 of 256 MiB "
                  f"{min(sha):.3f}-{max(sha):.3f} s, "
                  f"100-byte loopback round trip {min(rtt):.0f}-{max(rtt):.0f} µs, load average (1 min) "
                  f"{min(la):.1f}-{max(la):.1f} on {meta['cores']} cores."]
    return "\n".join(lines)


def write_doc(section):
    text = open(DOC).read() if os.path.exists(DOC) else "# Scaling\n"
    block = f"{BEGIN}\n{section}\n{END}"
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n## Measured: three nodes against one\n\n" + block + "\n"
    with open(DOC, "w") as f:
        f.write(text)


def main():
    global PORT_BASE, RESULTS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one rate, short runs, one round: a check of this script")
    ap.add_argument("--only", help="configurations, comma-separated: " + ", ".join(CONFIGS))
    ap.add_argument("--rates", help="messages/s to sweep, comma-separated (default: "
                    + ",".join(str(r) for r in RATES) + ")")
    ap.add_argument("--bin", default=compare.CORECAST, help="the corecast binary (default: target/release/corecast)")
    ap.add_argument("--loadgen", default=compare.LOADGEN, help="the corecast-loadgen binary")
    ap.add_argument("--bin-commit", help="the commit --bin was built from, for the record (default: HEAD)")
    ap.add_argument("--scylla", default=os.environ.get("CORECAST_TEST_SCYLLA_NODES", "127.0.0.1:9042"),
                    help="the Cassandra/ScyllaDB node (host:port)")
    ap.add_argument("--port-base", type=int, default=PORT_BASE, help="Redis's port; the nodes' ports follow it")
    ap.add_argument("--keep-keyspace", action="store_true", help="do not drop the keyspace at the end")
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite docs/scaling.md")
    a = ap.parse_args()
    PORT_BASE = a.port_base
    configs = CONFIGS
    if a.only:
        configs = [c for c in CONFIGS if c in a.only.split(",")]
        if not configs:
            ap.error(f"--only: one or more of {', '.join(CONFIGS)}")
    p = plan(a.quick)
    if a.rates:
        p["rates"] = [int(r) for r in a.rates.split(",")]
    if a.quick:
        RESULTS = QUICK_RESULTS
        compare.RETRY_SLOW = False
    for exe in (a.bin, a.loadgen):
        if not os.path.exists(exe):
            log(f"{exe} is missing (cargo build --release -p corecast-gateway -p corecast-loadgen, or --bin/--loadgen)")
            return 1
    host, port = a.scylla.rsplit(":", 1)
    try:
        cassandra = cql_ping.ping(host, int(port), 5)
    except (OSError, cql_ping.CqlError) as e:
        log(f"Cassandra/ScyllaDB does not answer CQL on {a.scylla} ({e}): start one with scripts/cassandra.sh start")
        return 1
    os.makedirs(RESULTS, exist_ok=True)
    full = not a.quick and not a.only and not a.rates
    if full:
        for old in glob.glob(os.path.join(RESULTS, "cluster-*")):
            os.remove(old)
    data = tempfile.mkdtemp(prefix="corecast-bench-redis-")
    keyspace = f"corecast_bench_{uuid.uuid4().hex[:12]}"
    meta = compare.versions()
    # The binary's build is not in it (`corecast --version` prints the crate version only):
    # --bin-commit says which commit a binary from elsewhere was built from.
    if a.bin_commit:
        meta["corecast_commit"] = a.bin_commit
    meta.update(bin=os.path.relpath(a.bin, ROOT) if a.bin.startswith(ROOT) else a.bin, cassandra=cassandra,
                command="bench/compare.sh --cluster" + "".join(
                    f" {x}" for x in sys.argv[1:]))
    redis = Redis(PORT_BASE, data)
    meta["redis"] = redis.version
    bench = Bench(a, redis, keyspace, RESULTS, p)
    runs = []
    failed = False
    try:
        live = list(configs)
        for rate in p["rates"]:
            if not live:
                break
            at_rate = {c: [] for c in live}
            for rnd in range(1, p["rounds"] + 1):
                for config in (live if rnd % 2 else list(reversed(live))):
                    rep = bench.run_held(config, rate, rnd)
                    at_rate[config].append(rep)
                    runs.append(rep)
            for config in list(live):
                if not any(held(r) for r in at_rate[config]):
                    log(f"{config} holds {rate}/s in no run (p99 < {P99_BOUND_MS:.0f} ms, nothing lost); "
                        "it leaves the sweep")
                    live.remove(config)
    finally:
        redis.stop()
        shutil.rmtree(data, ignore_errors=True)
        if not a.keep_keyspace:
            try:
                cql_ping.execute(f"DROP KEYSPACE IF EXISTS {keyspace}", host, int(port), 60)
            except (OSError, cql_ping.CqlError) as e:
                log(f"could not drop keyspace {keyspace}: {e}")
    meta["machine_check_end"] = machine_check()
    section = summarize(runs, meta, p, configs)
    with open(os.path.join(RESULTS, "cluster-summary.json"), "w") as f:
        json.dump({"meta": meta, "plan": p, "runs": runs}, f, indent=1)
    print(section)
    if full and not a.no_doc:
        write_doc(section)
    for r in runs:
        s = r.get("send") or {}
        bad = [k for k in ("duplicated", "out_of_order") if s.get(k)]
        if "failed" in r or "server_exited" in r or r.get("errors_total") or bad:
            log(f"misbehaved: {r.get('label')}: {r.get('failed') or r.get('server_exited') or r.get('errors') or bad}")
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
