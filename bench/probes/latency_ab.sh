#!/bin/bash
# latency_ab.sh BIN LABEL RATE: a fresh gateway (embedded store in a new folder, limits off unless
# RATE_LIMIT_PER_MIN is set) and one corecast-loadgen fan-out run at RATE messages/s against it;
# prints the delivery latency and CPU lines, and the mean of each hop inside the gateway.
# Run builds interleaved, twice each (docs/benchmarks.md).
BIN=$1; LABEL=$2; RATE=$3
source "$(dirname "$0")/gateway.sh"
D=$(mktemp -d)
start_gateway $BIN $D
fanout $RATE 8 2>&1 > $D/out; grep -E "delivery |CPU .*µs/delivery" $D/out | head -2 | sed "s/^/$LABEL $RATE: /"
echo "$LABEL $RATE: hop means µs: $(awk '/^inside the server/{on=1; next} on && NF==5 {printf "%s %s (%s)  ", $1, $3, $2} /^loadgen/{on=0}' $D/out)"
kill $PID; wait $PID 2>/dev/null
