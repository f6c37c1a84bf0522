#!/bin/bash
# thread_cpu.sh BIN RATE: a fresh gateway (embedded store in a new folder, limits off) and one
# corecast-loadgen fan-out run at RATE messages/s against it (1,000 connections in groups of 10);
# prints the delivery latency and CPU lines, then each thread's time on a CPU per message over
# 5 s of the send phase (/proc/PID/task/TID/schedstat, nanoseconds) with its voluntary and
# involuntary context switches. BIN may be any server that reads corecast's variables
# (socketioxide's baseline too), or a wrapper that execs one (docs/benchmarks.md, "What bounds
# CPU per delivery at 1,000-5,000/s").
BIN=$1; RATE=$2
source "$(dirname "$0")/gateway.sh"
D=$(mktemp -d)
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$D"' EXIT
start_gateway $BIN $D
fanout $RATE 12 > $D/out 2>&1 &
LG=$!
# Set-up and warm-up take about 3 s; the 5 s sampled fall inside the 12 s of sends.
sleep 5
snap() {
  for t in /proc/$PID/task/*; do
    echo "$(tr ' ' _ < $t/comm) $(cut -d' ' -f1 $t/schedstat) $(awk '/ctxt_switches/ {printf "%s ", $2}' $t/status)"
  done
}
snap > $D/a
sleep 5
snap > $D/b
wait $LG
grep -E "delivery |µs/delivery" $D/out | head -2
paste $D/a $D/b | awk -v r=$RATE '{ms=($6-$2)/1e6; if (ms >= 0.5) printf "%-16s cpu ms %7.1f  µs/msg %6.1f  voluntary %5d  involuntary %5d\n", $1, ms, ms*1e3/(r*5), $7-$3, $8-$4}' | sort
