#!/bin/bash
# before_after.sh BIN_A LABEL_A BIN_B LABEL_B: two gateway builds, interleaved, twice each
# (A B B A: the second run of a pair tends to be slower, so each build goes first once), on the same scenarios: fan-out of 1,000 connections in groups of 10 at 2,000 and
# 5,000 messages/s, and one room of 5,000 connections at 20 messages/s. Each run gets a fresh
# gateway (embedded store durable, in a new folder; limits off) on 127.0.0.1:4710. Prints one
# line per run: deliveries/s, delivery p50/p99, server CPU per delivery. SCENARIOS picks some
# of them (default "fanout2000 fanout5000 room").
set -u
LG="$(dirname "$0")/../../target/release/corecast-loadgen"
SECRET=bench-secret-0123456789abcdef0123456789abcdef
run() { # run BIN LABEL NAME LOADGEN-ARGS...
  local bin=$1 label=$2 name=$3
  shift 3
  local d
  d=$(mktemp -d)
  CORECAST_LISTEN=127.0.0.1:4710 CORECAST_INTERNAL_LISTEN=127.0.0.1:4711 CORECAST_DATA_DIR=$d \
    CORECAST_RATE_LIMIT_PER_MIN=0 CORECAST_EVENT_RATE_PER_SEC=0 CORECAST_MAX_PENDING_PER_IP=0 \
    CORECAST_DRAIN_SECS=0 CORECAST_JWT_SECRET=$SECRET CORECAST_ADMIN_TOKEN=a RUST_LOG=warn \
    "$bin" serve >"$d/log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do grep -q listening "$d/log" && break; sleep 0.1; done
  "$LG" --target 127.0.0.1:4710 --admin 127.0.0.1:4711 --jwt-secret $SECRET --admin-token a \
    --server-pid $pid --quiet "$@" >"$d/out" 2>&1
  printf '%-8s %-22s %s | %s | %s\n' "$label" "$name" \
    "$(grep -oE 'deliveries [0-9]+/s' "$d/out" | head -1)" \
    "$(awk '$1=="delivery" {print "p50", $2, "p99", $4, "ms"}' "$d/out" | head -1)" \
    "$(grep -oE 'CPU [0-9.]+ µs/delivery' "$d/out" | head -1)"
  kill $pid
  wait $pid 2>/dev/null
  rm -rf "$d"
}
for round in "A B" "B A"; do
  for side in $round; do
    if [[ $side == A ]]; then bin=$1 label=$2; else bin=$3 label=$4; fi
    for s in ${SCENARIOS:-fanout2000 fanout5000 room}; do
      case $s in
        fanout2000) run "$bin" "$label" "fanout 2000 msg/s" --conns 1000 --group-size 10 --rate 2000 --duration 8 --warmup 2 ;;
        fanout5000) run "$bin" "$label" "fanout 5000 msg/s" --conns 1000 --group-size 10 --rate 5000 --duration 8 --warmup 2 ;;
        room) run "$bin" "$label" "room 5000 at 20/s" --scenario large-room --conns 5000 --rate 20 --duration 8 --warmup 2 --src-addrs 4 ;;
      esac
    done
  done
done
