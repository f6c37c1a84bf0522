#!/usr/bin/env bash
# One command: build, run the same loadgen scenarios against corecast and the Node.js
# Socket.IO baseline on this machine, write bench/results/*.json and the comparison table
# in docs/benchmarks.md. `--quick` (a few minutes, for CI) fails only when corecast loses
# or duplicates messages or reports errors, never on speed. `--only baseline|corecast`.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 bench/compare.py "$@"
