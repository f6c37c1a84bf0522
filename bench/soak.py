#!/usr/bin/env python3
"""Soak: does the gateway's memory or file-descriptor count creep under hours of ordinary
traffic with connections coming and going? (issue 15, item 10)

One gateway (2 shards, embedded store durable, the limits as shipped), then for `--minutes`:
1. steady chat: `corecast-loadgen --scenario fanout`, `--conns` sockets in groups of 10,
   `--rate` messages/s (each user sends well under the per-user limit);
2. churn: every `--churn-every` seconds a `corecast-loadgen --scenario connect-storm` of
   `--churn` other users (connect at once, drop, reconnect at once, leave), alternating
   WebSocket and long-polling rounds, the users reused from round to round;
3. every `--sample-every` seconds the gateway's RSS, open descriptors, connections and rooms.

It fails (exit 1) when:
- RSS less the embedded store's own memory (`corecast_store_memory_bytes`: SQLite's page
  caches, which fill up to 64 MiB per connection as the database grows, then stay) grows,
  after the warm-up (the first fifth of the run, at least one churn round), by more than
  max(10 %, 32 MiB) over its first sample after the warm-up;
- the store's memory passes its bound (two connections' caches and 16 MiB);
- the open descriptors measured between churn rounds (when only the steady sockets are open)
  vary by more than 16;
- the steady chat lost, duplicated or reordered a message or saw an error, or a churn round
  did not get every socket in.

    python3 bench/soak.py --bin target/release/corecast \
        --loadgen target/release/corecast-loadgen --minutes 60

scripts/test.sh runs a short version (`--minutes 1`). The timeline goes to `--json`.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gatewaylib import Gateway, log as _log, stop_all, wait_for  # noqa: E402

PORT = 3720
MIB = 1 << 20
# Two SQLite connections (the writer and the checkpointer) with 64 MiB of page cache each,
# and room for statements and the like (storage/src/embedded.rs).
STORE_BOUND = 2 * 64 * MIB + 16 * MIB


def log(msg):
    _log("soak", msg)


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", required=True)
    ap.add_argument("--loadgen", required=True)
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--conns", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=200, help="messages/s of the steady chat")
    ap.add_argument("--churn", type=int, default=500, help="sockets per churn round")
    ap.add_argument("--churn-every", type=float, default=10)
    ap.add_argument("--sample-every", type=float, default=10)
    ap.add_argument("--json", help="write the timeline and verdict here")
    args = ap.parse_args()

    total = args.minutes * 60
    warmup = max(total / 5, args.churn_every + 5)
    data = tempfile.mkdtemp(prefix="corecast-soak-")
    procs = []
    failures = []
    samples = []
    between_rounds_fds = []
    rounds = []
    try:
        gw = Gateway(args.bin, PORT, data)
        procs.append(gw.proc)
        env, common = gw.loadgen_env(), gw.loadgen_args()
        steady_out = os.path.join(data, "steady.json")
        steady = subprocess.Popen(
            [args.loadgen, "--scenario", "fanout", "--conns", str(args.conns),
             "--group-size", "10", "--group-prefix", "soak-", "--rate", str(args.rate),
             "--duration", str(total), "--warmup", "2", "--threads", "1",
             "--json", steady_out] + common,
            env=env, stdout=subprocess.DEVNULL, stderr=open(os.path.join(data, "steady.log"), "w"))
        procs.append(steady)
        wait_for("the steady chat's sends",
                 lambda: gw.metric("corecast_messages_in_total") > 0, 120)
        t0 = time.monotonic()
        log(f"steady chat running: {args.conns} sockets, {args.rate:.0f} messages/s, "
            f"{args.minutes:g} min")
        next_churn, next_sample, k = t0 + args.churn_every, t0, 0
        while time.monotonic() - t0 < total and steady.poll() is None:
            now = time.monotonic()
            if now >= next_sample:
                text = gw.metrics_text()
                samples.append({
                    "t": round(now - t0, 1), "rss_bytes": rss_bytes(gw.pid),
                    "store_bytes": gw.metric("corecast_store_memory_bytes", text),
                    "fds": open_fds(gw.pid),
                    "connections": gw.metric("corecast_connections", text),
                    "rooms": gw.metric("corecast_rooms", text),
                    "deliveries": gw.metric("corecast_deliveries_total", text),
                })
                next_sample += args.sample_every
            if now >= next_churn:
                # Only the steady sockets are open now: the last round has left.
                between_rounds_fds.append(open_fds(gw.pid))
                transport = "websocket" if k % 2 == 0 else "polling"
                out = os.path.join(data, f"churn{k % 2}.json")
                run = subprocess.run(
                    [args.loadgen, "--scenario", "connect-storm", "--conns", str(args.churn),
                     "--group-size", "10", "--user-base", "500001", "--group-prefix", "churn-",
                     "--transport", transport, "--duration", "0.2", "--threads", "1",
                     "--json", out] + common,
                    env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                    timeout=300)
                ready = []
                if run.returncode == 0:
                    ready = [r["ready"] for r in json.load(open(out))["connect"]]
                rounds.append({"t": round(now - t0, 1), "transport": transport,
                               "ready": ready, "exit": run.returncode})
                if run.returncode != 0 or ready != [args.churn, args.churn]:
                    failures.append(f"churn round {k} ({transport}): exit {run.returncode}, "
                                    f"ready {ready}: {run.stderr[-500:]}")
                k += 1
                next_churn = time.monotonic() + args.churn_every
            time.sleep(max(0.0, min(next_sample, next_churn) - time.monotonic()))
        steady.wait(timeout=120)
        rep = json.load(open(steady_out))
        send = rep.get("send") or {}
        if rep.get("errors_total") or any(send.get(f) for f in ("lost", "duplicated",
                                                                  "out_of_order")):
            failures.append(f"steady chat: errors {rep.get('errors')}, lost {send.get('lost')}, "
                            f"duplicated {send.get('duplicated')}, "
                            f"out of order {send.get('out_of_order')}")
        after = [s for s in samples if s["t"] >= warmup]
        if after:
            base = after[0]["rss_bytes"] - after[0]["store_bytes"]
            peak = max(s["rss_bytes"] - s["store_bytes"] for s in after)
            allowed = max(base * 0.10, 32 * MIB)
            if peak - base > allowed:
                failures.append(f"RSS less the store's caches grew {(peak - base) / MIB:.1f} MiB "
                                f"after the warm-up (from {base / MIB:.1f} MiB; allowed "
                                f"{allowed / MIB:.1f})")
        store_peak = max((s["store_bytes"] for s in samples), default=0)
        if store_peak > STORE_BOUND:
            failures.append(f"the store's memory reached {store_peak / MIB:.1f} MiB, over its "
                            f"bound of {STORE_BOUND / MIB:.0f} MiB")
        if between_rounds_fds and max(between_rounds_fds) - min(between_rounds_fds) > 16:
            failures.append(f"descriptors between churn rounds moved: {between_rounds_fds}")

        print(f"soak: {args.minutes:g} min, {args.conns} steady sockets at {args.rate:.0f} "
              f"messages/s, {len(rounds)} churn rounds of {args.churn} sockets (x2 connects)")
        print(f"{'t (s)':>7} {'RSS MiB':>8} {'store MiB':>9} {'fds':>6} {'conns':>6} {'rooms':>6} "
              f"{'deliveries':>11}")
        step = max(1, len(samples) // 24)
        for s in samples[::step] + ([samples[-1]] if samples and len(samples) % step else []):
            print(f"{s['t']:>7.0f} {s['rss_bytes'] / MIB:>8.1f} {s['store_bytes'] / MIB:>9.1f} "
                  f"{s['fds']:>6} "
                  f"{s['connections']:>6.0f} {s['rooms']:>6.0f} {s['deliveries']:>11.0f}")
        if between_rounds_fds:
            print(f"descriptors between churn rounds: min {min(between_rounds_fds)}, "
                  f"max {max(between_rounds_fds)}")
        lat = send.get("latency", {})
        print(f"steady chat: {send.get('sent')} sent, {send.get('deliveries')} deliveries, "
              f"lost {send.get('lost')}, p50 {lat.get('p50_ms')} ms, p99 {lat.get('p99_ms')} ms, "
              f"errors {rep.get('errors_total')}")
        print("verdict: " + ("flat" if not failures else "FAILED"))
        for f in failures:
            print(f"  - {f}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"args": vars(args), "samples": samples, "churn": rounds,
                           "fds_between_rounds": between_rounds_fds, "steady": send,
                           "failures": failures}, f, indent=1)
    finally:
        stop_all(procs)
        shutil.rmtree(data, ignore_errors=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
