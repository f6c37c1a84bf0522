"""A hand-rolled Engine.IO v4 long-polling client (requests), for protocol tests that the official
clients cannot express: overlapping GETs, oversized POSTs, upgrades by hand, requests on fresh TCP
connections (so the kernel spreads them over the gateway's shards).

Every request is bounded by a timeout. A GET returns the packets of one answer (split on the
record separator); the server's pings ("2") are answered with a pong in the next POST by `pong()`.
"""

import json

import requests

SEP = "\x1e"


class PollingClient:
    def __init__(self, public: str, path: str = "/socket.io/", origin: str | None = None,
                 keep_alive: bool = False, timeout: float = 10.0):
        self.base = f"http://{public}{path}"
        self.headers = {"Origin": origin} if origin else {}
        # Without keep-alive every request opens a new TCP connection: SO_REUSEPORT then lands
        # it on any shard, which is what the routing by sid must handle.
        self.http = requests.Session() if keep_alive else requests
        self.timeout = timeout
        r = self.http.get(self.base, params={"EIO": "4", "transport": "polling"},
                          headers=self.headers, timeout=timeout)
        assert r.status_code == 200, (r.status_code, r.text)
        assert r.text.startswith("0"), r.text
        self.open_response = r
        self.open = json.loads(r.text[1:])
        self.sid = self.open["sid"]

    def params(self, **extra):
        return {"EIO": "4", "transport": "polling", "sid": self.sid, **extra}

    def get_raw(self, timeout: float | None = None) -> requests.Response:
        return self.http.get(self.base, params=self.params(), headers=self.headers,
                             timeout=timeout or self.timeout)

    def get(self, timeout: float | None = None) -> list[str]:
        r = self.get_raw(timeout)
        assert r.status_code == 200, (r.status_code, r.text)
        return r.text.split(SEP) if r.text else []

    def post_raw(self, body: str | bytes) -> requests.Response:
        return self.http.post(self.base, params=self.params(), data=body,
                              headers={**self.headers, "Content-Type": "text/plain;charset=UTF-8"},
                              timeout=self.timeout)

    def post(self, *packets: str) -> None:
        r = self.post_raw(SEP.join(packets).encode())
        assert r.status_code == 200 and r.text == "ok", (r.status_code, r.text)

    def connect(self, token: str) -> dict:
        """Socket.IO CONNECT; returns the CONNECT answer's payload (raises on CONNECT_ERROR)."""
        self.post("40" + json.dumps({"token": token}))
        p = self.wait(lambda p: p.startswith("40") or p.startswith("44"))
        assert p.startswith("40"), p
        return json.loads(p[2:])

    def wait(self, predicate, gets: int = 20) -> str:
        """GETs until a packet matches (answering pings); returns it. Earlier packets are kept
        in `self.seen`."""
        self.seen = getattr(self, "seen", [])
        for p in self.seen:
            if predicate(p):
                self.seen.remove(p)
                return p
        for _ in range(gets):
            found = None
            for p in self.get():
                if p == "2":
                    self.post("3")
                elif found is None and predicate(p):
                    found = p
                else:
                    self.seen.append(p)  # kept for later waits, in order
            if found is not None:
                return found
        raise AssertionError(f"no matching packet in {gets} GETs; seen {self.seen!r}")

    def wait_event(self, name: str, predicate=None, gets: int = 20):
        def match(p):
            if not p.startswith("42"):
                return False
            ev = json.loads(p[2:])
            return ev[0] == name and (predicate is None or predicate(ev[1]))
        return json.loads(self.wait(match, gets)[2:])[1]

    def call(self, event: str, data, ack_id: int = 1, gets: int = 20):
        self.post(f"42{ack_id}" + json.dumps([event, data]))
        p = self.wait(lambda p: p.startswith(f"43{ack_id}["), gets)
        return json.loads(p[2 + len(str(ack_id)):])[0]
