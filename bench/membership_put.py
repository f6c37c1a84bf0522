#!/usr/bin/env python3
"""Does a large membership change stall delivery? (issue 15, item 5)

One gateway (2 shards, embedded store in a temporary folder, limits off), then:
1. `corecast-loadgen --scenario idle` holds `--idle` authenticated sockets (users 1..N, no
   groups) for the whole run;
2. `corecast-loadgen --scenario fanout` sends `--rate` messages/s into groups of 10 among 200
   other users (ids from 200001) and measures delivery latency per second;
3. a few seconds into the send phase, `PUT /api/groups/bench-big` makes users 1..`--members`
   members of one group (so every idle socket is enrolled into its room live), timed.

Prints the PUT's duration, the fanout's p99 per second (the PUT's second marked) and its
overall p99.9 and max. Run it once per build to compare (`--bin`); the machine must be the
same and as quiet as it can be. Nothing here asserts speed.

    python3 bench/membership_put.py --bin target/release/corecast \
        --loadgen target/release/corecast-loadgen
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gatewaylib import Gateway, log as _log, stop_all, wait_for  # noqa: E402

PORT = 3700


def log(msg):
    _log("membership_put", msg)


def slow_share(text, name, bound="0.025"):
    """(observations over `bound` seconds, all observations) of histogram `name`."""
    def get(suffix):
        m = re.search(r"^" + re.escape(name) + suffix + r"\s+(\d+)$", text, re.M)
        return int(m.group(1)) if m else 0
    total = get(r'_bucket\{le="\+Inf"\}')
    return total - get(r'_bucket\{le="' + re.escape(bound) + r'"\}'), total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--loadgen", required=True)
    ap.add_argument("--idle", type=int, default=15_000)
    ap.add_argument("--members", type=int, default=100_000)
    ap.add_argument("--rate", type=float, default=1000)
    ap.add_argument("--duration", type=float, default=16)
    ap.add_argument("--put-after", type=float, default=6, help="seconds into the send phase")
    ap.add_argument("--json", help="write the fanout loadgen's report here")
    args = ap.parse_args()

    data = tempfile.mkdtemp(prefix="corecast-mput-")
    procs = []
    try:
        gw = Gateway(args.bin, PORT, data, dict(CORECAST_RATE_LIMIT_PER_MIN="0",
                                                CORECAST_EVENT_RATE_PER_SEC="0"))
        procs.append(gw.proc)
        metric, http = gw.metric, gw.http
        lg_env = gw.loadgen_env()
        common = gw.loadgen_args()
        idle_secs = args.duration + 60
        idle = subprocess.Popen(
            [args.loadgen, "--scenario", "idle", "--conns", str(args.idle), "--no-users",
             "--groups", "0", "--duration", str(idle_secs), "--src-addrs", "4",
             "--threads", "1"] + common,
            env=lg_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(idle)
        wait_for(f"{args.idle} idle sockets",
                 lambda: metric("corecast_connections") >= args.idle, 120)
        log(f"{args.idle} idle sockets open")
        out = args.json or os.path.join(data, "fanout.json")
        fan = subprocess.Popen(
            [args.loadgen, "--scenario", "fanout", "--conns", "200", "--group-size", "10",
             "--user-base", "200001", "--group-prefix", "mput-", "--rate", str(args.rate),
             "--duration", str(args.duration), "--warmup", "2", "--threads", "1",
             "--json", out] + common,
            env=lg_env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        procs.append(fan)
        base = metric("corecast_messages_in_total")
        wait_for("the fanout's sends", lambda: metric("corecast_messages_in_total") > base, 120)
        send_start = time.monotonic()
        log("fanout sending")
        time.sleep(max(0.0, args.put_after - (time.monotonic() - send_start)))
        body = json.dumps({"name": "big", "members": list(range(1, args.members + 1))}).encode()
        m0 = http("GET", "/metrics")[1].decode()
        t = time.monotonic()
        status, _ = http("PUT", "/api/groups/bench-big", body)
        put_s = time.monotonic() - t
        at = t - send_start
        time.sleep(1.0)  # deliveries of the PUT's second land in the histograms
        m1 = http("GET", "/metrics")[1].decode()
        log(f"PUT {args.members} members: {status} in {put_s:.2f} s, {at:.1f} s into sending")
        table, _ = fan.communicate(timeout=args.duration + 120)
        if fan.returncode != 0:
            raise SystemExit(f"fanout loadgen failed ({fan.returncode})")
        rep = json.load(open(out))
        secs = [s for s in rep["timeline"] if s["sent"] > 0]
        t0 = secs[0]["t"] if secs else 0
        print(f"PUT of {args.members} members with {args.idle} sockets open: HTTP {status}, "
              f"{put_s:.2f} s (sent {at:.1f} s into the send phase)")
        print("fanout p99 per second (ms), send phase:")
        print("  " + " ".join(
            (f"[{s['p99_ms']:.0f}]" if int(at) <= s["t"] - t0 <= int(at + put_s) + 1
             else f"{s['p99_ms']:.0f}") for s in secs))
        for name, what in [("corecast_store_latency_seconds", "store (submit -> durable)"),
                           ("corecast_delivery_latency_seconds",
                            "shards (durable -> queued on the socket)")]:
            (s0, n0), (s1, n1) = slow_share(m0, name), slow_share(m1, name)
            print(f"{what}, from the PUT to 1 s after it: {s1 - s0} of {n1 - n0} over 25 ms")
        send = rep.get("send") or {}
        lat = send.get("latency", {})
        print(f"overall: p50 {lat.get('p50_ms')} ms, p99 {lat.get('p99_ms')} ms, "
              f"p99.9 {lat.get('p999_ms')} ms, max {lat.get('max_ms')} ms; "
              f"lost {send.get('lost')}, errors {rep.get('errors_total')}")
    finally:
        stop_all(procs)
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
