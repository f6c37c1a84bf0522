# Sourced by the probes in this folder: a fresh gateway and the loadgen's fan-out run against
# it, with the same settings in every probe.
PROBE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PROBE_SECRET=bench-secret-0123456789abcdef0123456789abcdef

# start_gateway BIN DIR: BIN serve with the embedded store in DIR, limits off (the per-user
# message limit from RATE_LIMIT_PER_MIN when set), its log in DIR/log; sets PID and returns
# once it is listening.
start_gateway() {
  CORECAST_LISTEN=127.0.0.1:4700 CORECAST_INTERNAL_LISTEN=127.0.0.1:4701 CORECAST_DATA_DIR=$2 \
    CORECAST_RATE_LIMIT_PER_MIN=${RATE_LIMIT_PER_MIN:-0} CORECAST_EVENT_RATE_PER_SEC=0 \
    CORECAST_MAX_PENDING_PER_IP=0 CORECAST_DRAIN_SECS=0 CORECAST_JWT_SECRET=$PROBE_SECRET \
    CORECAST_ADMIN_TOKEN=a RUST_LOG=warn $1 serve > $2/log 2>&1 &
  PID=$!
  for _ in $(seq 50); do grep -q listening $2/log && break; sleep 0.1; done
}

# fanout RATE DURATION: one loadgen run against that gateway, 1,000 connections in groups of
# 10, RATE messages/s for DURATION s after 2 s of warm-up; its report on stdout.
fanout() {
  "$PROBE_ROOT/target/release/corecast-loadgen" --target 127.0.0.1:4700 --admin 127.0.0.1:4701 \
    --jwt-secret $PROBE_SECRET --admin-token a --conns 1000 --group-size 10 --rate $1 \
    --duration $2 --warmup 2 --server-pid $PID --quiet
}
