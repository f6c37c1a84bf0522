"""Fixtures for black-box tests of the corecast gateway with the official Python client.

`gateway`           a started gateway on ephemeral loopback ports, fresh data dir, stopped after
                    the test. `.public` / `.internal` are "host:port"; `.url` is the public base
                    URL for Socket.IO; `.admin(method, path, json)`; `.token(sub, **claims)`;
                    `.restart()` (same data dir and ports); `.kill9()`; `.put_user` / `.put_group`.
`start_gateway`     factory for tests that need their own settings:
                    `start_gateway(CORECAST_ALLOWED_ORIGINS="http://good.example")`; a value
                    of None unsets a test default, e.g. `CORECAST_EVENT_RATE_PER_SEC=None`
                    runs with the gateway's own default.
`connect`           factory: `connect(gateway, user_id)` returns a connected `ChatClient`
                    (see chat_client.py); every client is disconnected at teardown.

Which binary: $CORECAST_BIN, else target/release/corecast in this repo. A missing binary fails
the test with a message saying how to build it; nothing is skipped silently.
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from chat_client import ChatClient, ConnectFailed  # noqa: E402
from gateway_process import GatewayProcess  # noqa: E402


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keeps each phase's report on the item, so fixtures can tell a failed test at teardown."""
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


def _test_failed(request) -> bool:
    return any(getattr(getattr(request.node, f"rep_{w}", None), "failed", False)
               for w in ("setup", "call"))


@pytest.fixture
def start_gateway(request, tmp_path):
    """Factory: start_gateway(**env) starts one more gateway; all are stopped at teardown.

    On a failed test the tail of each gateway's log is printed (pytest shows it with the
    failure), and the full log stays in the test's tmp_path.
    """
    started = []

    def start(**env):
        n = len(started)
        gw = GatewayProcess(data_dir=tmp_path / f"gateway{n}-data",
                            log_path=tmp_path / f"gateway{n}.log", env=env)
        started.append(gw)
        gw.start()
        return gw

    yield start
    failed = _test_failed(request)
    for gw in started:
        gw.stop()
        if failed:
            print(f"\n----- {gw.log_path} (last 60 lines) -----\n{gw.log_tail(60)}")


@pytest.fixture
def gateway(start_gateway):
    """A gateway with default test settings (4 shards, embedded store, rate limit off)."""
    return start_gateway()


@pytest.fixture
def connect():
    """Factory: connect(gateway, user_id=None, token=None, **kw) -> connected ChatClient.

    Pass `token=` to connect with a hand-made token (bad, expired, ...); with
    `expect_failure=True` it returns the ChatClient after a refused connect instead of raising,
    so the test can read the `connect_error` payload.
    """
    clients = []

    def make(gateway, user_id=None, token=None, expect_failure=False, **kw):
        if token is None:
            if user_id is None:
                raise ValueError("connect() needs user_id or token")
            token = gateway.token(user_id)
        client = ChatClient(name=f"user{user_id}" if user_id is not None else "client")
        clients.append(client)
        try:
            client.connect(gateway.url, token, **kw)
        except ConnectFailed:
            if expect_failure:
                return client
            raise
        if expect_failure:
            raise AssertionError("connect was expected to be refused but succeeded")
        return client

    yield make
    for c in clients:
        c.close()


# ----- shared by the topic files (test_protocol.py, test_events.py, ...) ----------------------

import itertools  # noqa: E402

from raw_client import RawClient, raw_connect  # noqa: E402

_ids = itertools.count(1000)


@pytest.fixture
def new_id():
    """Fresh ids for users and groups, unique across the session, so tests can share a
    module-scoped gateway without seeing each other's rooms."""
    return lambda: next(_ids)


@pytest.fixture(scope="module")
def module_gateway(request, tmp_path_factory):
    """One gateway per test module (faster than one per test). Settings: the module's
    `GATEWAY_ENV` dict, if any. Tests must use fresh ids (`new_id`)."""
    env = getattr(request.module, "GATEWAY_ENV", {})
    d = tmp_path_factory.mktemp("module-gateway")
    gw = GatewayProcess(data_dir=d / "data", log_path=d / "gateway.log", env=env)
    failed_before = request.session.testsfailed
    gw.start()
    yield gw
    gw.stop()
    if request.session.testsfailed > failed_before:
        print(f"\n----- {gw.log_path} (last 60 lines) -----\n{gw.log_tail(60)}")


@pytest.fixture
def raw():
    """Factory: raw(gateway, user_id=None, token=None, connect=True, **kw) -> RawClient.
    With connect=False only the Engine.IO handshake is done. All are closed at teardown."""
    clients = []

    def make(gateway, user_id=None, token=None, connect=True, **kw):
        if connect:
            c = raw_connect(gateway, user_id, token, **kw)
        else:
            c = RawClient(gateway.public, **kw)
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


@pytest.fixture
def make_group(new_id):
    """Factory: make_group(gw, n, extra_members=()) creates n fresh users and a fresh group with
    them (plus extra_members); returns (group_id, [user_ids]). Group ids are strings (`g-1042`),
    as the chat app's are; tests/python/test_group_ids.py covers unicode, spaces and digits."""
    def make(gw, n_members: int, extra_members=()):
        uids = [new_id() for _ in range(n_members)]
        for u in uids:
            gw.put_user(u)
        gid = f"g-{new_id()}"
        gw.put_group(gid, uids + list(extra_members))
        return gid, uids
    return make
