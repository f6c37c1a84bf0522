"""Proves the Cassandra harness (scripts/cassandra.sh + cassandra_util) that Rust tests rely on."""

import pytest

from cassandra_util import require_cassandra


@pytest.mark.cassandra
def test_cassandra_answers_cql():
    version = require_cassandra()
    assert version, "system.local returned an empty release_version"
