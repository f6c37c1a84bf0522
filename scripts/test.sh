#!/usr/bin/env bash
# The whole test suite, in one command, on a fresh machine:
#
#   scripts/test.sh
#
# It installs what it needs (idempotently, quietly), then runs, failing fast:
#   1. cargo fmt --check, cargo clippy -D warnings
#   2. cargo build --release --bins
#   3. starts Cassandra (scripts/cassandra.sh) and an SMTP server (scripts/smtp_server.py),
#      stopped again on exit
#   4. cargo test --workspace --release (Rust unit and integration tests; the cluster bus tests
#      start redis-server processes of their own: Debian's `redis-server`, installed when missing)
#   5. pytest tests/python (black-box tests with the official Python Socket.IO client;
#      test_cluster.py runs three gateway nodes on a redis-server of its own and Cassandra;
#      test_cluster_lb.py puts Debian's `haproxy`, installed when missing, in front of them)
#   6. node --test tests/js/ (black-box tests with the official JavaScript client, and the demo
#      page in headless Chromium: Debian's `chromium`, installed here when missing)
#   6b. cargo +nightly fuzz: builds every fuzz target (fuzz/, docs/fuzzing.md) and runs each
#      for CORECAST_FUZZ_SECS (default 15) on its seeds; installs cargo-fuzz if missing
#   7. bench/compare.sh --quick: a short corecast vs socketioxide vs Node.js Socket.IO
#      comparison with corecast-loadgen (builds bench/baseline-socketioxide/ first, about 2
#      minutes cold; the run itself about 3 minutes); prints the table, fails only when corecast
#      or the socketioxide baseline misbehaves (errors, lost, duplicated or out-of-order
#      messages, a crash), never on speed
#   8. bench/soak.py --minutes 1: steady chat with connections churning; fails when the
#      gateway's RSS or open descriptors creep (CORECAST_SOAK_MINUTES; skipped with the bench)
#
# Environment exported to the tests:
#   CORECAST_BIN, CORECAST_NOTIFIER_BIN      the release binaries
#   CORECAST_TEST_SCYLLA_NODES               127.0.0.1:<cassandra port>
#   CORECAST_TEST_SMTP_HOST / _PORT / _MAILDIR  a shared SMTP server (fault mode: <maildir>/.mode)
#   CORECAST_TEST_SMTP_SERVER, CORECAST_TEST_PYTHON  to start a private SMTP server per test:
#       $CORECAST_TEST_PYTHON $CORECAST_TEST_SMTP_SERVER --port 0 --maildir DIR
#
# For local iteration only (ignored when CI=true, where everything runs):
#   CORECAST_TEST_SKIP_LINT=1        skip cargo fmt and clippy
#   CORECAST_TEST_SKIP_CASSANDRA=1   do not start Cassandra (tests that need it then fail,
#                                    saying so; use with an already running node)
#   CORECAST_TEST_SKIP_CARGO_TEST=1  skip cargo test (black-box tests only)
#   CORECAST_TEST_SKIP_JS=1          skip the JavaScript tests
#   CORECAST_TEST_SKIP_FUZZ=1        skip building and running the fuzz targets
#   CORECAST_TEST_SKIP_BENCH=1       skip the quick benchmark comparison
# Other knobs: CORECAST_CACHE (default ~/.cache/corecast: Cassandra jars, Python venv),
# CORECAST_CASSANDRA_PORT (default 9042), CORECAST_TEST_CHROMIUM (a Chromium binary other than
# `chromium` on PATH), PYTEST_ADDOPTS, CARGO_BUILD_JOBS.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO="$PWD"
CACHE="${CORECAST_CACHE:-$HOME/.cache/corecast}"
export CORECAST_CACHE="$CACHE"
T0=$SECONDS
SECTION_T0=$SECONDS

section() {
  local now=$SECONDS
  if [[ -n "${SECTION_NAME:-}" ]]; then
    echo "--- ${SECTION_NAME}: done in $((now - SECTION_T0)) s"
  fi
  SECTION_NAME="$1"
  SECTION_T0=$now
  echo
  echo "=================================================================="
  echo "=== $1"
  echo "=================================================================="
}

skip() { # skip VAR: true when a developer asked to skip that part, outside CI
  local var="$1"
  if [[ "${!var:-0}" == 1 ]]; then
    if [[ "${CI:-}" == true ]]; then
      echo "note: $var=1 is ignored in CI; running everything" >&2
      return 1
    fi
    echo "(skipped: $var=1)"
    return 0
  fi
  return 1
}

die() { echo "test.sh: $*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# Services started here are stopped on any exit, success or failure.
CASSANDRA_STARTED=0
SMTP_PID=""
cleanup() {
  local rc=$?
  set +e
  if [[ -n "$SMTP_PID" ]]; then
    kill "$SMTP_PID" 2>/dev/null
    wait "$SMTP_PID" 2>/dev/null
  fi
  if [[ "$CASSANDRA_STARTED" == 1 ]]; then
    echo "--- stopping Cassandra"
    scripts/cassandra.sh stop
  fi
  if [[ $rc == 0 ]]; then
    echo "=== all tests passed in $((SECONDS - T0)) s"
  else
    echo "=== FAILED (exit $rc) in section '${SECTION_NAME:-setup}' after $((SECONDS - T0)) s" >&2
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
section "tools and test dependencies"

for tool in cargo python3 node npm; do
  command -v "$tool" >/dev/null || die "$tool is not installed"
done
node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' \
  || die "Node.js 20 or newer is needed for node --test (found $(node --version))"
APT_UPDATED=0
apt_install() { # apt_install WHAT PACKAGE...: Debian packages, as root, lists updated once per run
  local what="$1"
  shift
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    echo "installing $what with apt-get"
    if [[ "$APT_UPDATED" == 0 ]]; then
      apt-get update -qq
      APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    die "the tests need $what (on Debian, as root: apt-get install $*)"
  fi
}
if ! command -v java >/dev/null || ! command -v mvn >/dev/null; then
  apt_install "Java 17 and Maven (to run Cassandra)" openjdk-17-jre-headless maven
fi
# cluster/tests/*.rs and tests/python/test_cluster.py start redis-server processes of their
# own (Debian's Redis 7).
if ! command -v redis-server >/dev/null; then
  apt_install "Redis (for the cluster tests)" redis-server
fi
echo "redis: $(redis-server --version | cut -d' ' -f3)"
# test_cluster_lb.py and tests/js/cluster.test.js put Debian's HAProxy, balancing round-robin,
# in front of three nodes.
if ! command -v haproxy >/dev/null && [[ ! -x /usr/sbin/haproxy ]]; then
  apt_install "HAProxy (for the cluster tests without sticky sessions)" haproxy
fi
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  command -v rustup >/dev/null && rustup component add rustfmt clippy
fi

# Python packages go into a venv in the cache: no clash with the system's packages (PEP 668)
# or a developer's own, and a second run only checks that the pins are satisfied.
VENV="$CACHE/venv-py$(python3 -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')"
if [[ ! -x "$VENV/bin/python" ]]; then
  python3 -m venv "$VENV" || die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
fi
export PATH="$VENV/bin:$PATH"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
python -m pip install -q -r tests/python/requirements.txt
echo "python: $(python --version) in $VENV; test packages installed"

if ! skip CORECAST_TEST_SKIP_JS; then
  (cd tests/js && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  echo "node: $(node --version); tests/js packages installed (npm ci)"
  # tests/js/browser.test.js drives the demo page in headless Chromium (puppeteer-core brings
  # no browser of its own).
  if [[ -z "${CORECAST_TEST_CHROMIUM:-}" ]] && ! command -v chromium >/dev/null; then
    apt_install "Chromium (for tests/js/browser.test.js)" chromium
  fi
  echo "chromium: $("${CORECAST_TEST_CHROMIUM:-chromium}" --version 2>/dev/null)"
fi
# Without the optional better-sqlite3 (compiled from source, about 2 minutes): only the full
# bench/compare.sh runs Node.js + SQLite.
(cd bench/baseline && npm ci --no-audit --no-fund --loglevel=error --omit=optional >/dev/null)
echo "bench/baseline packages installed (npm ci --omit=optional)"

# ---------------------------------------------------------------------------------------------
section "cargo fmt --check and clippy"
if ! skip CORECAST_TEST_SKIP_LINT; then
  cargo fmt --all --check
  cargo clippy --workspace --all-targets -- -D warnings
fi

# ---------------------------------------------------------------------------------------------
section "cargo build --release"
cargo build --workspace --release --bins
export CORECAST_BIN="$REPO/target/release/corecast"
export CORECAST_NOTIFIER_BIN="$REPO/target/release/corecast-notifier"
[[ -x "$CORECAST_BIN" ]] || die "cargo build did not produce $CORECAST_BIN"

# ---------------------------------------------------------------------------------------------
section "services: Cassandra and SMTP"
export CORECAST_TEST_SCYLLA_NODES="127.0.0.1:${CORECAST_CASSANDRA_PORT:-9042}"
if ! skip CORECAST_TEST_SKIP_CASSANDRA; then
  if scripts/cassandra.sh status >/dev/null 2>&1; then
    echo "Cassandra already answers on $CORECAST_TEST_SCYLLA_NODES; using it (not stopped on exit)"
  else
    CASSANDRA_STARTED=1
    scripts/cassandra.sh start
  fi
fi

SMTP_DIR="$(mktemp -d "${TMPDIR:-/tmp}/corecast-smtp.XXXXXX")"
python scripts/smtp_server.py --port 0 --maildir "$SMTP_DIR/mail" \
  >"$SMTP_DIR/stdout" 2>"$SMTP_DIR/smtp.log" &
SMTP_PID=$!
# It prints `SMTP READY <port>` once it listens; bounded wait (polling a file is fine here:
# this is start-up of a helper, not synchronisation inside a test).
SMTP_PORT=""
for _ in $(seq 1 300); do
  SMTP_PORT="$(sed -n 's/^SMTP READY \([0-9]*\)$/\1/p' "$SMTP_DIR/stdout")"
  [[ -n "$SMTP_PORT" ]] && break
  kill -0 "$SMTP_PID" 2>/dev/null || break
  sleep 0.1
done
if [[ -z "$SMTP_PORT" ]]; then
  cat "$SMTP_DIR/smtp.log" >&2
  die "SMTP server did not become ready"
fi
export CORECAST_TEST_SMTP_HOST=127.0.0.1
export CORECAST_TEST_SMTP_PORT="$SMTP_PORT"
export CORECAST_TEST_SMTP_MAILDIR="$SMTP_DIR/mail"
export CORECAST_TEST_SMTP_SERVER="$REPO/scripts/smtp_server.py"
export CORECAST_TEST_PYTHON="$VENV/bin/python"
echo "SMTP server on 127.0.0.1:$SMTP_PORT (maildir $CORECAST_TEST_SMTP_MAILDIR, log $SMTP_DIR/smtp.log)"

# ---------------------------------------------------------------------------------------------
section "cargo test --release"
if ! skip CORECAST_TEST_SKIP_CARGO_TEST; then
  cargo test --workspace --release
fi

# ---------------------------------------------------------------------------------------------
section "pytest tests/python (python-socketio client)"
python -m pytest tests/python -q

# ---------------------------------------------------------------------------------------------
section "node --test tests/js/ (socket.io-client)"
if ! skip CORECAST_TEST_SKIP_JS; then
  node --test tests/js/
fi

# ---------------------------------------------------------------------------------------------
section "fuzz targets (cargo-fuzz on nightly, ${CORECAST_FUZZ_SECS:-15} s each)"
if ! skip CORECAST_TEST_SKIP_FUZZ; then
  rustup toolchain list | grep -q '^nightly' \
    || rustup toolchain install nightly --profile minimal \
    || die "the nightly toolchain is needed for cargo-fuzz (rustup toolchain install nightly)"
  command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
  rustfmt --edition 2021 --check fuzz/fuzz_targets/*.rs
  cargo +nightly fuzz build
  FUZZ_CORPUS="$(mktemp -d "${TMPDIR:-/tmp}/corecast-fuzz.XXXXXX")"
  for target in $(cargo +nightly fuzz list); do
    mkdir -p "$FUZZ_CORPUS/$target"
    echo "--- fuzz $target"
    # libFuzzer grows the first corpus (a temporary one) and only reads the committed seeds.
    if ! cargo +nightly fuzz run "$target" "$FUZZ_CORPUS/$target" "fuzz/seeds/$target" -- \
        -max_total_time="${CORECAST_FUZZ_SECS:-15}" -print_final_stats=1 >"$FUZZ_CORPUS/$target.log" 2>&1; then
      tail -60 "$FUZZ_CORPUS/$target.log" >&2
      die "fuzz target $target failed; the input is in fuzz/artifacts/$target/ (docs/fuzzing.md)"
    fi
    grep -E '^stat::number_of_executed_units' "$FUZZ_CORPUS/$target.log" || true
  done
  rm -rf "$FUZZ_CORPUS"
fi

# ---------------------------------------------------------------------------------------------
section "bench/compare.sh --quick (corecast vs socketioxide and Node.js; fails on misbehaviour, not speed)"
if ! skip CORECAST_TEST_SKIP_BENCH; then
  [[ -x target/release/corecast-loadgen ]] \
    || die "cargo build did not produce target/release/corecast-loadgen"
  # The socketioxide baseline: its own workspace (bench/baseline-socketioxide/Cargo.lock),
  # its own target folder; about 2 minutes cold on 2 cores, crates from crates.io.
  t0=$SECONDS
  cargo build --release --locked --manifest-path bench/baseline-socketioxide/Cargo.toml \
    --target-dir target/baseline-socketioxide
  echo "socketioxide baseline built in $((SECONDS - t0)) s"
  if [[ "$CASSANDRA_STARTED" == 1 ]]; then # not needed any more: give its CPU to the bench
    scripts/cassandra.sh stop
    CASSANDRA_STARTED=0
  fi
  # Reuses the release binaries built above; the table goes to stdout, raw results to
  # target/bench-quick/.
  bench/compare.sh --quick --no-build
fi

# ---------------------------------------------------------------------------------------------
section "bench/soak.py, short (RSS and descriptors flat under churn; the hour-long run is in docs)"
if ! skip CORECAST_TEST_SKIP_BENCH; then
  python3 bench/soak.py --bin target/release/corecast --loadgen target/release/corecast-loadgen \
    --minutes "${CORECAST_SOAK_MINUTES:-1}" --churn-every 5 --sample-every 5
fi

echo "--- ${SECTION_NAME}: done in $((SECONDS - SECTION_T0)) s"
SECTION_NAME="finished"
