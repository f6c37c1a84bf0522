#!/usr/bin/env bash
# One command: build, run the same loadgen scenarios against corecast and the Node.js
# Socket.IO baseline on this machine, write bench/results/*.json and the comparison table
# in docs/benchmarks.md. The fan-out is measured over WebSocket and over HTTP long-polling.
# `--quick` (about 3 minutes, for CI; results in target/bench-quick/, docs untouched) prints
# the table and fails only when corecast misbehaves (errors, lost, duplicated or out-of-order
# messages, on either transport), never on speed. `--only baseline|corecast`,
# `--no-build` (reuse target/release/), `--no-doc`. Installs bench/baseline's npm packages
# (npm ci) when they are missing or older than package-lock.json.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 bench/compare.py "$@"
