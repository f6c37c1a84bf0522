#!/usr/bin/env bash
# Runs a real single-node Apache Cassandra 5.0 on loopback for corecast's tests.
#
#   scripts/cassandra.sh start    download (once), configure, start, wait until CQL answers
#   scripts/cassandra.sh stop     stop the node started here and wait for it to exit
#   scripts/cassandra.sh status   exit 0 if CQL answers on the port, 1 otherwise
#
# Where it comes from: Maven Central does not serve the apache-cassandra bin tarball (every
# 5.0.N tried was "not found"), so this fetches org.apache.cassandra:cassandra-all and its
# runtime dependencies with Maven (scripts/cassandra/pom.xml) and runs
# org.apache.cassandra.service.CassandraDaemon with a minimal cassandra.yaml written here.
# The jars are cached under $CORECAST_CACHE, so reruns and CI on the same machine do not
# download again (Maven's own ~/.m2 cache also holds them).
#
# Environment:
#   CORECAST_CASSANDRA_VERSION   cassandra-all version (default 5.0.9, the newest 5.0.N served)
#   CORECAST_CACHE               cache root (default ~/.cache/corecast)
#   CORECAST_CASSANDRA_PORT      CQL native port (default 9042)
#   CORECAST_CASSANDRA_STORAGE_PORT  inter-node port, loopback only (default 7000)
#   CORECAST_CASSANDRA_RUN_DIR   data, commitlog, logs, pid (default $CACHE/cassandra-run)
#   CASSANDRA_KEEP_DATA=1        keep the run dir's data on start (default: wiped)
#   CORECAST_CASSANDRA_WAIT_SECS bounded wait for CQL on start (default 180)
#   MAX_HEAP_SIZE / HEAP_NEWSIZE JVM heap (default 2G / 400M: the suite makes a keyspace per
#                                cluster test, and 1G ran out after about 140 of them)
#   JAVA                         java binary (default: java on PATH; needs Java 11 or 17)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VERSION="${CORECAST_CASSANDRA_VERSION:-5.0.9}"
CACHE="${CORECAST_CACHE:-$HOME/.cache/corecast}"
PORT="${CORECAST_CASSANDRA_PORT:-9042}"
STORAGE_PORT="${CORECAST_CASSANDRA_STORAGE_PORT:-7000}"
RUN_DIR="${CORECAST_CASSANDRA_RUN_DIR:-$CACHE/cassandra-run}"
WAIT_SECS="${CORECAST_CASSANDRA_WAIT_SECS:-180}"
MAX_HEAP_SIZE="${MAX_HEAP_SIZE:-2G}"
HEAP_NEWSIZE="${HEAP_NEWSIZE:-400M}"
JAVA="${JAVA:-java}"
INSTALL_DIR="$CACHE/cassandra-$VERSION"
PID_FILE="$RUN_DIR/cassandra.pid"
LOG_FILE="$RUN_DIR/logs/stdout.log"

log() { echo "cassandra.sh: $*" >&2; }

cql_answers() {
  python3 "$SCRIPT_DIR/cassandra/cql_ping.py" --port "$PORT" --timeout 2 "$@"
}

# Fetches cassandra-all $VERSION and its runtime jars into $INSTALL_DIR/lib, once.
install() {
  if [[ -f "$INSTALL_DIR/.complete" ]]; then
    return
  fi
  command -v mvn >/dev/null || { log "mvn not found: install Maven (apt-get install maven)"; exit 1; }
  log "fetching cassandra-all $VERSION and its dependencies with Maven into $INSTALL_DIR"
  rm -rf "$INSTALL_DIR"
  mkdir -p "$INSTALL_DIR/lib"
  if ! mvn -q -B -f "$SCRIPT_DIR/cassandra/pom.xml" dependency:copy-dependencies \
      -Dcassandra.version="$VERSION" -DincludeScope=runtime \
      -DoutputDirectory="$INSTALL_DIR/lib" >"$INSTALL_DIR/mvn.log" 2>&1; then
    log "Maven could not fetch cassandra-all $VERSION:"
    tail -n 30 "$INSTALL_DIR/mvn.log" >&2
    exit 1
  fi
  touch "$INSTALL_DIR/.complete"
}

running_pid() {
  local pid
  [[ -f "$PID_FILE" ]] || return 1
  pid="$(cat "$PID_FILE")"
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

write_config() {
  mkdir -p "$RUN_DIR"/{conf,data,commitlog,saved_caches,hints,cdc_raw,logs,triggers}
  # A small single node: loopback only, one token, no auth, no snapshots, few threads.
  cat >"$RUN_DIR/conf/cassandra.yaml" <<YAML
cluster_name: corecast-test
num_tokens: 1
initial_token: 0
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1:$STORAGE_PORT"
listen_address: 127.0.0.1
rpc_address: 127.0.0.1
storage_port: $STORAGE_PORT
native_transport_port: $PORT
start_native_transport: true
authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
data_file_directories:
  - $RUN_DIR/data
commitlog_directory: $RUN_DIR/commitlog
saved_caches_directory: $RUN_DIR/saved_caches
hints_directory: $RUN_DIR/hints
cdc_raw_directory: $RUN_DIR/cdc_raw
commitlog_sync: periodic
commitlog_sync_period: 10000ms
commitlog_segment_size: 32MiB
auto_snapshot: false
snapshot_before_compaction: false
concurrent_reads: 4
concurrent_writes: 4
concurrent_counter_writes: 4
concurrent_materialized_view_writes: 2
concurrent_compactors: 1
compaction_throughput: 0MiB/s
memtable_heap_space: 128MiB
memtable_offheap_space: 128MiB
key_cache_size: 16MiB
native_transport_max_threads: 16
disk_access_mode: mmap_index_only
hinted_handoff_enabled: false
dynamic_snitch: false
read_request_timeout: 10000ms
write_request_timeout: 10000ms
request_timeout: 20000ms
materialized_views_enabled: true
sasi_indexes_enabled: true
user_defined_functions_enabled: false
YAML
  cat >"$RUN_DIR/conf/logback.xml" <<XML
<configuration scan="false">
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>$RUN_DIR/logs/system.log</file>
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="FILE"/></root>
  <logger name="org.apache.cassandra" level="INFO"/>
  <logger name="com.datastax" level="WARN"/>
</configuration>
XML
}

start() {
  if running_pid >/dev/null; then
    if cql_answers >/dev/null 2>&1; then
      log "already running (pid $(running_pid)), CQL on 127.0.0.1:$PORT"
      return 0
    fi
    log "a node from $PID_FILE is running but CQL does not answer; stopping it first"
    stop
  fi
  if cql_answers >/dev/null 2>&1; then
    log "something else already answers CQL on 127.0.0.1:$PORT; not starting a second node"
    exit 1
  fi
  install
  if [[ "${CASSANDRA_KEEP_DATA:-0}" != 1 ]]; then
    rm -rf "$RUN_DIR"
  fi
  write_config

  local jamm
  jamm="$(ls "$INSTALL_DIR"/lib/jamm-*.jar | head -n 1)"
  # JVM flags: the heap asked for, plus the module openings Cassandra 5.0 needs on Java 17
  # (as in its conf/jvm17-server.options), and start-up shortcuts for a lone test node.
  local -a jvm=(
    -Xms"$MAX_HEAP_SIZE" -Xmx"$MAX_HEAP_SIZE" -Xmn"$HEAP_NEWSIZE" -Xss256k
    -XX:+UseG1GC -XX:+ParallelRefProcEnabled -XX:MaxTenuringThreshold=1 -XX:G1HeapRegionSize=16m
    -XX:+HeapDumpOnOutOfMemoryError -XX:HeapDumpPath="$RUN_DIR/logs"
    -XX:+ExitOnOutOfMemoryError
    # C1 only: boots in about half the time; a test node needs no peak throughput.
    -XX:TieredStopAtLevel=1
    -javaagent:"$jamm"
    -Djdk.attach.allowAttachSelf=true
    --add-exports java.base/jdk.internal.misc=ALL-UNNAMED
    --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
    --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED
    --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED
    --add-exports java.sql/java.sql=ALL-UNNAMED
    --add-exports java.base/java.lang.ref=ALL-UNNAMED
    --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED
    --add-exports jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED
    --add-exports jdk.attach/sun.tools.attach=ALL-UNNAMED
    --add-opens java.base/java.lang.module=ALL-UNNAMED
    --add-opens java.base/jdk.internal.loader=ALL-UNNAMED
    --add-opens java.base/jdk.internal.ref=ALL-UNNAMED
    --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED
    --add-opens java.base/jdk.internal.math=ALL-UNNAMED
    --add-opens java.base/jdk.internal.module=ALL-UNNAMED
    --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED
    --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED
    --add-opens java.base/sun.nio.ch=ALL-UNNAMED
    --add-opens java.base/java.io=ALL-UNNAMED
    --add-opens java.base/java.lang.reflect=ALL-UNNAMED
    --add-opens jdk.compiler/com.sun.tools.javac=ALL-UNNAMED
    --add-opens java.base/java.lang=ALL-UNNAMED
    --add-opens java.base/java.util=ALL-UNNAMED
    -Dio.netty.tryReflectionSetAccessible=true
    -Dio.netty.allocator.useCacheForAllThreads=true
    -Dio.netty.allocator.maxOrder=11
    -Dcassandra.config="file://$RUN_DIR/conf/cassandra.yaml"
    -Dlogback.configurationFile="$RUN_DIR/conf/logback.xml"
    -Dcassandra.logdir="$RUN_DIR/logs"
    -Dcassandra.storagedir="$RUN_DIR"
    -Dcassandra.triggers_dir="$RUN_DIR/triggers"
    -Dcassandra-foreground=yes
    -Dcassandra.skip_wait_for_gossip_to_settle=0
    -Dcassandra.ring_delay_ms=1000
    -Dcassandra.auto_bootstrap=false
    -Dcassandra.initial_token=0
    -Dcassandra.num_tokens=1
    -Dcassandra.superuser_setup_delay_ms=0
    -Dcassandra.migration_task_wait_in_seconds=1
    -Dcassandra.skip_schema_check=true
  )
  log "starting Cassandra $VERSION: CQL 127.0.0.1:$PORT, heap $MAX_HEAP_SIZE, run dir $RUN_DIR"
  local t0=$SECONDS
  # setsid: the node gets its own session, so the caller's Ctrl-C or process-group kill is
  # not what stops it; `stop` does, by PID.
  setsid "$JAVA" "${jvm[@]}" -cp "$INSTALL_DIR/lib/*" org.apache.cassandra.service.CassandraDaemon \
    </dev/null >"$LOG_FILE" 2>&1 &
  echo $! >"$PID_FILE"
  local pid
  pid="$(cat "$PID_FILE")"
  while ((SECONDS - t0 < WAIT_SECS)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      log "Cassandra exited during start-up; last log lines:"
      tail -n 40 "$LOG_FILE" "$RUN_DIR/logs/system.log" >&2 2>/dev/null || true
      rm -f "$PID_FILE"
      exit 1
    fi
    local version
    if version="$(cql_answers 2>/dev/null)"; then
      log "Cassandra $version answers CQL on 127.0.0.1:$PORT (pid $pid, booted in $((SECONDS - t0)) s)"
      return 0
    fi
    sleep 1
  done
  log "Cassandra did not answer CQL within ${WAIT_SECS} s; last log lines:"
  tail -n 40 "$LOG_FILE" "$RUN_DIR/logs/system.log" >&2 2>/dev/null || true
  stop
  exit 1
}

stop() {
  local pid
  if ! pid="$(running_pid)"; then
    rm -f "$PID_FILE"
    log "not running"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "pid $pid ignored SIGTERM for 30 s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
  fi
  rm -f "$PID_FILE"
  log "stopped (pid $pid)"
}

status() {
  local version
  if version="$(cql_answers 2>/dev/null)"; then
    echo "Cassandra $version answers CQL on 127.0.0.1:$PORT"
    return 0
  fi
  echo "Cassandra does not answer CQL on 127.0.0.1:$PORT (start it with scripts/cassandra.sh start)"
  return 1
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
