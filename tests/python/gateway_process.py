"""Runs the `corecast serve` binary as a child process for black-box tests.

Contract with the binary (docs/ and the gateway crate own the details):
- configured only through CORECAST_* environment variables set here; inherited CORECAST_*
  variables are dropped so a developer's shell cannot change what a test runs against;
- once every shard accepts, it prints exactly one stdout line
  `corecast listening public=HOST:PORT internal=HOST:PORT shards=N store=KIND`;
- SIGTERM is a graceful stop.
stdout and stderr are drained into one log file for the process's whole life, so a chatty
gateway can never block on a full pipe.
"""

import os
import re
import signal
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path

import jwt
import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_RE = re.compile(
    r"^corecast listening public=(?P<public>\S+) internal=(?P<internal>\S+) "
    r"shards=(?P<shards>\d+) store=(?P<store>\S+)\s*$")
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0

DEFAULT_JWT_SECRET = "corecast-test-secret-0123456789abcdef"
DEFAULT_ADMIN_TOKEN = "corecast-test-admin-token"


def group_path(group_id) -> str:
    """`/api/groups/<id>` with the group id (a string; a number is taken as its decimal string,
    as the gateway does) percent-encoded as one path segment: spaces, unicode, `/` and all."""
    return "/api/groups/" + urllib.parse.quote(str(group_id), safe="")


def release_binary(name: str, env_var: str) -> Path:
    """$env_var if set, else target/release/<name>; fails with what to do when it is missing."""
    path = Path(os.environ.get(env_var) or REPO_ROOT / "target/release" / name)
    if not path.is_file() or not os.access(path, os.X_OK):
        raise AssertionError(
            f"{name} binary not found at {path}: build it with "
            f"`cargo build --release --bins` or set {env_var}")
    return path


def gateway_binary() -> Path:
    return release_binary("corecast", "CORECAST_BIN")


class GatewayProcess:
    """One gateway process; restartable on the same data dir and ports."""

    def __init__(self, data_dir: Path, log_path: Path, env: dict | None = None):
        self.data_dir = Path(data_dir)
        self.log_path = Path(log_path)
        self.jwt_secret = DEFAULT_JWT_SECRET
        self.admin_token = DEFAULT_ADMIN_TOKEN
        self.env = {
            "CORECAST_LISTEN": "127.0.0.1:0",
            "CORECAST_INTERNAL_LISTEN": "127.0.0.1:0",
            "CORECAST_SHARDS": "4",
            "CORECAST_DATA_DIR": str(self.data_dir),
            "CORECAST_JWT_SECRET": self.jwt_secret,
            "CORECAST_ADMIN_TOKEN": self.admin_token,
            # Tests send faster than a person; tests of the limit itself set it explicitly.
            "CORECAST_RATE_LIMIT_PER_MIN": "0",
            # Likewise the per-connection event limit (test_limits.py runs with the default).
            "CORECAST_EVENT_RATE_PER_SEC": "0",
            # Stops at once on SIGTERM (a test of the drain sets its window).
            "CORECAST_DRAIN_SECS": "0",
            "RUST_LOG": os.environ.get("RUST_LOG", "info"),
        }
        # A value of None unsets the key: the gateway's own default applies.
        for k, v in (env or {}).items():
            if v is None:
                self.env.pop(k, None)
            else:
                self.env[k] = str(v)
        self.jwt_secret = self.env["CORECAST_JWT_SECRET"]
        self.admin_token = self.env["CORECAST_ADMIN_TOKEN"]
        self.proc: subprocess.Popen | None = None
        self.public = self.internal = None
        self.shards = self.store = None
        self._drainers: list[threading.Thread] = []
        self._log_lock = threading.Lock()
        self._log = None
        self._http = requests.Session()

    # ----- lifecycle -----------------------------------------------------------------------

    def start(self, timeout: float = READY_TIMEOUT) -> "GatewayProcess":
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("gateway already running")
        binary = gateway_binary()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CORECAST_")}
        env.update(self.env)
        if self.public is not None:  # a restart comes back on the same ports
            env["CORECAST_LISTEN"] = self.public
            env["CORECAST_INTERNAL_LISTEN"] = self.internal
        self._log = open(self.log_path, "ab", buffering=0)
        self._write_log(f"=== start {binary} serve ===\n".encode())
        self.proc = subprocess.Popen([str(binary), "serve"], env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, cwd=str(self.data_dir))
        ready = threading.Event()
        found: dict = {}

        def drain(stream, watch_ready: bool):
            for line in iter(stream.readline, b""):
                self._write_log(line)
                if watch_ready and not ready.is_set():
                    m = READY_RE.match(line.decode("utf-8", "replace"))
                    if m:
                        found.update(m.groupdict())
                        ready.set()
            stream.close()

        self._drainers = [
            threading.Thread(target=drain, args=(self.proc.stdout, True), daemon=True),
            threading.Thread(target=drain, args=(self.proc.stderr, False), daemon=True),
        ]
        for t in self._drainers:
            t.start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                reason = (f"exited with status {self.proc.returncode}"
                          if self.proc.poll() is not None else f"not ready within {timeout:.0f} s")
                self._kill_and_reap()
                raise AssertionError(
                    f"gateway {reason} (no 'corecast listening ...' line on stdout); "
                    f"log {self.log_path}:\n{self.log_tail(40)}")
        self.public, self.internal = found["public"], found["internal"]
        self.shards, self.store = int(found["shards"]), found["store"]
        return self

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, wait up to `timeout`, then SIGKILL. Returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._write_log(b"=== did not stop on SIGTERM; SIGKILL ===\n")
                self._kill_and_reap()
        return self._finish()

    def kill9(self) -> None:
        """Kills the gateway abruptly (no shutdown path runs), as a crash or power loss would."""
        if self.proc is not None and self.proc.poll() is None:
            self._kill_and_reap()
        self._finish()

    def restart(self, timeout: float = READY_TIMEOUT) -> "GatewayProcess":
        """Stops (gracefully, if still running) and starts again on the same data dir and ports."""
        self.stop()
        return self.start(timeout)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _kill_and_reap(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def _finish(self) -> int | None:
        for t in self._drainers:
            t.join(5)
        self._drainers = []
        rc = self.proc.returncode
        self._write_log(f"=== exited with status {rc} ===\n".encode())
        if self._log is not None:
            self._log.close()
            self._log = None
        return rc

    def _write_log(self, data: bytes) -> None:
        with self._log_lock:
            if self._log is not None:
                self._log.write(data)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # ----- clients' view ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL for Socket.IO clients (they add /socket.io/ themselves)."""
        return f"http://{self.public}"

    def token(self, sub, **claims) -> str:
        """An HS256 JWT for user `sub`, valid for an hour; `claims` add to or override it
        (e.g. exp=<past> for an expired token, nbf=<future>)."""
        now = int(time.time())
        payload = {"sub": sub, "iat": now, "exp": now + 3600}
        payload.update(claims)
        return jwt.encode(payload, self.jwt_secret, algorithm="HS256")

    def admin(self, method: str, path: str, json=None, token: str | None = None,
              timeout: float = 10.0) -> requests.Response:
        """A request to the internal listener with the admin bearer token (or `token`)."""
        headers = {"Authorization": f"Bearer {token if token is not None else self.admin_token}"}
        return self._http.request(method, f"http://{self.internal}{path}", json=json,
                                  headers=headers, timeout=timeout)

    def _admin_ok(self, method: str, path: str, json=None) -> requests.Response:
        r = self.admin(method, path, json)
        assert 200 <= r.status_code < 300, f"{method} {path} -> {r.status_code}: {r.text}"
        return r

    def put_user(self, user_id: int, email: str | None = None, name: str | None = None):
        return self._admin_ok("PUT", f"/api/users/{user_id}", {
            "email": email or f"user{user_id}@example.test", "name": name or f"User {user_id}"})

    def put_group(self, group_id, members: list[int], name: str | None = None):
        return self._admin_ok("PUT", group_path(group_id),
                              {"name": name or f"Group {group_id}", "members": members})

    def add_member(self, group_id, user_id: int):
        return self._admin_ok("PUT", f"{group_path(group_id)}/members/{user_id}")

    def remove_member(self, group_id, user_id: int):
        return self._admin_ok("DELETE", f"{group_path(group_id)}/members/{user_id}")

    def history(self, group_id, limit: int | None = None, before: str | None = None) -> list:
        params = [f"limit={limit}"] if limit is not None else []
        if before is not None:
            params.append(f"before={before}")
        q = ("?" + "&".join(params)) if params else ""
        return self._admin_ok("GET", f"{group_path(group_id)}/messages{q}").json()["messages"]
