#!/usr/bin/env bash
# One command: build, run the same loadgen scenarios against corecast, the socketioxide
# baseline (bench/baseline-socketioxide/), the Node.js Socket.IO baseline and Node.js + SQLite
# (bench/baseline/, BASELINE_STORE=sqlite) on this machine, on 2 cores and per core (server
# pinned to CPU 0, loadgen to CPU 1), write bench/results/*.json and the comparison table in
# docs/benchmarks.md. The fan-out is measured over WebSocket and over HTTP long-polling.
# `--quick` (about 3 minutes, for CI; corecast, socketioxide and Node.js only, no per-core
# mode; results in target/bench-quick/, docs untouched) prints the table and fails only when
# corecast or socketioxide misbehaves (errors, lost, duplicated or out-of-order messages, a
# crash), never on speed. `--per-core` (that mode alone), `--only KIND,...` (corecast,
# socketioxide, baseline, baseline-sqlite), `--no-build` (reuse target/release/), `--no-doc`.
# Installs bench/baseline's npm packages (npm ci) when they are missing or older than
# package-lock.json.
# `--cluster [flags]`: cluster mode instead (bench/cluster.py: one node on the Scylla store
# with and without the Redis bus, and three nodes; results in bench/results/cluster-*.json and
# docs/scaling.md); needs redis-server and a Cassandra/ScyllaDB node.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ${1:-} == --cluster ]]; then
  shift
  exec python3 bench/cluster.py "$@"
fi
exec python3 bench/compare.py "$@"
