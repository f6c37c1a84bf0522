"""What the bench scripts share: one gateway process on fixed ports with a temporary data
folder, its admin API and /metrics, and stopping what they started."""

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

SECRET = "bench-secret-0123456789abcdef0123456789abcdef"
ADMIN = "bench-admin-token"


class Gateway:
    """`corecast serve` on 127.0.0.1:`port` (public) and `port + 1` (internal), embedded store
    in `data`, limits as shipped unless `env` overrides them; drain off so that it stops at
    once."""

    def __init__(self, binary: str, port: int, data: str, env: dict | None = None):
        self.port = port
        base = {k: v for k, v in os.environ.items() if not k.startswith("CORECAST_")}
        base.update(CORECAST_LISTEN=f"127.0.0.1:{port}",
                    CORECAST_INTERNAL_LISTEN=f"127.0.0.1:{port + 1}",
                    CORECAST_SHARDS="2", CORECAST_DATA_DIR=data, CORECAST_JWT_SECRET=SECRET,
                    CORECAST_ADMIN_TOKEN=ADMIN, CORECAST_DRAIN_SECS="0", RUST_LOG="warn")
        base.update(env or {})
        self.env = base
        self.proc = subprocess.Popen([binary, "serve"], env=base, stdout=subprocess.PIPE,
                                     stderr=open(os.path.join(data, "server.log"), "w"),
                                     text=True)
        line = self.proc.stdout.readline()
        if "listening" not in line:
            raise SystemExit(f"gateway did not start: {line!r}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def loadgen_args(self) -> list[str]:
        """The flags that point corecast-loadgen at this gateway (secrets come by env)."""
        return ["--target", f"127.0.0.1:{self.port}", "--admin", f"127.0.0.1:{self.port + 1}",
                "--quiet"]

    def loadgen_env(self) -> dict:
        return dict(self.env, CORECAST_JWT_SECRET=SECRET, CORECAST_ADMIN_TOKEN=ADMIN)

    def http(self, method: str, path: str, body: bytes | None = None, timeout: float = 120):
        req = urllib.request.Request(f"http://127.0.0.1:{self.port + 1}{path}", method=method,
                                     data=body, headers={"Authorization": f"Bearer {ADMIN}",
                                                         "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()

    def metrics_text(self) -> str:
        return self.http("GET", "/metrics")[1].decode()

    def metric(self, name: str, text: str | None = None) -> float:
        """The sum of `name`'s samples over its labels."""
        text = self.metrics_text() if text is None else text
        pat = re.compile(r"^" + re.escape(name) + r"(\{[^}]*\})?\s+([0-9.eE+-]+)$", re.M)
        return sum(float(v) for _, v in pat.findall(text))


def wait_for(what: str, pred, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what}: not within {timeout} s")
        time.sleep(0.1)


def stop_all(procs) -> None:
    """SIGTERM each process still running, newest first; SIGKILL after 15 s."""
    for p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def log(tag: str, msg: str) -> None:
    print(f"[{tag}] {msg}", file=sys.stderr, flush=True)
