#!/usr/bin/env python3
"""What one bus message costs each side: the publisher's bus thread, the subscriber's, and Redis.

Runs cluster/examples/bus_latency.rs (two buses in one process: B publishes 200-byte payloads
at a fixed rate over 100 channels that A subscribes to; it prints the publish-to-handler
latency and Redis's CPU per message from `INFO cpu`) against a redis-server of its own, and
reads meanwhile, every 20 ms, the CPU time of the example's threads from
/proc/PID/task/*/stat: the two `cc-bus` threads (A's is started first, so it has the lower
thread id; B's pipelines the PUBLISH calls and reads their answers, A's reads the pushed
messages and runs the handler) and the main thread (the caller's side of a publish: the
payload handed to B's queue, and the open-loop pacing), and Redis's from /proc/PID/stat.
The last sample before the example exits is used, so up to 20 ms of the end (the tail wait,
no sends) is missed; the first one follows the subscriptions.

    cargo build --release --example bus_latency -p corecast-cluster
    python3 bench/probes/bus_cost.py --bus-latency target/release/examples/bus_latency

Rates interleaved, `--rounds` times each (this VM is noisy); one line per run, and the load
average before it.
"""

import argparse
import glob
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from cluster import HZ, Redis, loadavg, proc_cpu_s  # noqa: E402
from compare import machine_check  # noqa: E402


def threads(pid):
    """(tid, name, CPU seconds) of each thread of `pid`."""
    out = []
    for task in glob.glob(f"/proc/{pid}/task/*"):
        try:
            with open(f"{task}/comm") as f:
                name = f.read().strip()
            with open(f"{task}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out.append((int(os.path.basename(task)), name, (int(fields[11]) + int(fields[12])) / HZ))
    return sorted(out)


def one(exe, redis, rate, seconds):
    check = machine_check()
    load = loadavg()
    proc = subprocess.Popen([exe, redis.url, str(rate), str(seconds), "100"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    first = last = None
    r0 = r1 = None
    while proc.poll() is None:
        t = threads(proc.pid)
        buses = [x for x in t if x[1] == "cc-bus"]
        if len(buses) == 2:
            r = proc_cpu_s(redis.proc.pid)
            if first is None:
                first, r0 = t, r
            last, r1 = t, r
        time.sleep(0.02)
    out = proc.stdout.read()
    m = re.search(r"received (\d+) of (\d+); latency µs p50 (\d+) p90 (\d+) p99 (\d+)", out)
    info = re.search(r"redis CPU per message: ([0-9.]+)", out)
    if not (m and first and last):
        return {"rate": rate, "failed": out}
    n = int(m.group(2))

    def cpu(snap, pick):
        return sum(c for tid, name, c in snap if pick(tid, name))
    sub_tid, pub_tid = sorted(tid for tid, name, _ in first if name == "cc-bus")
    main_tid = proc.pid
    res = {
        "rate": rate, "messages": n, "received": int(m.group(1)),
        "p50_us": int(m.group(3)), "p90_us": int(m.group(4)), "p99_us": int(m.group(5)),
        "publisher_bus_us": (cpu(last, lambda t, _: t == pub_tid) - cpu(first, lambda t, _: t == pub_tid)) * 1e6 / n,
        "subscriber_bus_us": (cpu(last, lambda t, _: t == sub_tid) - cpu(first, lambda t, _: t == sub_tid)) * 1e6 / n,
        "caller_us": (cpu(last, lambda t, _: t == main_tid) - cpu(first, lambda t, _: t == main_tid)) * 1e6 / n,
        "redis_proc_us": (r1 - r0) * 1e6 / n,
        "redis_info_us": float(info.group(1)) if info else None,
        "loadavg_before": load, "machine_check": check,
    }
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bus-latency", default="target/release/examples/bus_latency")
    ap.add_argument("--rates", default="1000,5000,20000")
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--port", type=int, default=26350, help="the Redis's port (below 32768)")
    a = ap.parse_args()
    data = tempfile.mkdtemp(prefix="corecast-bus-cost-")
    redis = Redis(a.port, data)
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, redis-server {redis.version}; "
          f"µs of CPU per message; {a.seconds} s per run, 100 channels, one subscriber", flush=True)
    print("rate/s  publisher-bus  subscriber-bus  caller  redis(/proc)  redis(INFO)  p50/p99 µs  "
          "received  load(1,5,15)  sha256 s  loopback µs", flush=True)
    try:
        for rnd in range(a.rounds):
            rates = [int(r) for r in a.rates.split(",")]
            for rate in (rates if rnd % 2 == 0 else list(reversed(rates))):
                r = one(a.bus_latency, redis, rate, a.seconds)
                if "failed" in r:
                    print(f"{rate}: failed: {r['failed']!r}", flush=True)
                    continue
                print(f"{rate:>6}  {r['publisher_bus_us']:>13.1f}  {r['subscriber_bus_us']:>14.1f}  "
                      f"{r['caller_us']:>6.1f}  {r['redis_proc_us']:>12.1f}  {r['redis_info_us']:>11.1f}  "
                      f"{r['p50_us']}/{r['p99_us']:<8}  {r['received']}/{r['messages']}  "
                      f"{' '.join(str(x) for x in r['loadavg_before'])}  {r['machine_check']['sha256_256mib_s']}  "
                      f"{r['machine_check']['loopback_round_trip_us']}", flush=True)
    finally:
        redis.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
