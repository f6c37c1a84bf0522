"""Helpers for tests that need a Cassandra/ScyllaDB node (started by scripts/cassandra.sh).

The node list comes from CORECAST_TEST_SCYLLA_NODES (comma-separated host:port; default
127.0.0.1:9042), which scripts/test.sh exports after starting Cassandra. A test that needs the
node calls `require_cassandra()`: it fails (never skips) when the node does not answer CQL.
"""

import importlib.util
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

_spec = importlib.util.spec_from_file_location(
    "cql_ping", REPO_ROOT / "scripts/cassandra/cql_ping.py")
cql_ping = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cql_ping)


def scylla_nodes() -> list[str]:
    raw = os.environ.get("CORECAST_TEST_SCYLLA_NODES", "127.0.0.1:9042")
    return [n.strip() for n in raw.split(",") if n.strip()]


def require_cassandra(timeout: float = 5.0) -> str:
    """Asserts the first configured node answers CQL; returns its release_version."""
    node = scylla_nodes()[0]
    host, port = node.rsplit(":", 1)
    try:
        return cql_ping.ping(host, int(port), timeout)
    except (OSError, cql_ping.CqlError) as e:
        raise AssertionError(
            f"Cassandra/ScyllaDB does not answer CQL on {node} ({e}). Start one with "
            "`scripts/cassandra.sh start` (or run everything with scripts/test.sh), and set "
            "CORECAST_TEST_SCYLLA_NODES if it is not on 127.0.0.1:9042.") from e
