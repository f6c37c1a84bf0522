#!/bin/bash
# latency_ab.sh BIN LABEL RATE: a fresh gateway (embedded store in a new folder, limits off unless
# RATE_LIMIT_PER_MIN is set) and one corecast-loadgen fan-out run at RATE messages/s against it;
# prints the delivery latency and CPU lines, and the mean of each hop inside the gateway.
# Run builds interleaved, twice each (docs/benchmarks.md).
BIN=$1; LABEL=$2; RATE=$3
D=$(mktemp -d)
CORECAST_LISTEN=127.0.0.1:4700 CORECAST_INTERNAL_LISTEN=127.0.0.1:4701 CORECAST_DATA_DIR=$D CORECAST_RATE_LIMIT_PER_MIN=${RATE_LIMIT_PER_MIN:-0} CORECAST_EVENT_RATE_PER_SEC=0 CORECAST_MAX_PENDING_PER_IP=0 CORECAST_DRAIN_SECS=0 CORECAST_JWT_SECRET=bench-secret-0123456789abcdef0123456789abcdef CORECAST_ADMIN_TOKEN=a RUST_LOG=warn $BIN serve > $D/log 2>&1 &
PID=$!
for i in $(seq 50); do grep -q listening $D/log && break; sleep 0.1; done
"$(dirname "$0")/../../target/release/corecast-loadgen" --target 127.0.0.1:4700 --admin 127.0.0.1:4701 --jwt-secret bench-secret-0123456789abcdef0123456789abcdef --admin-token a --conns 1000 --group-size 10 --rate $RATE --duration 8 --warmup 2 --server-pid $PID --quiet 2>&1 > $D/out; grep -E "delivery |CPU .*µs/delivery" $D/out | head -2 | sed "s/^/$LABEL $RATE: /"
echo "$LABEL $RATE: hop means µs: $(awk '/^inside the server/{on=1; next} on && NF==5 {printf "%s %s (%s)  ", $1, $3, $2} /^loadgen/{on=0}' $D/out)"
kill $PID; wait $PID 2>/dev/null
