"""A hand-rolled Engine.IO v4 / Socket.IO v5 client over a raw WebSocket (websocket-client),
for protocol tests that the official client cannot express: arbitrary frames, no CONNECT,
binary frames, oversized messages, not answering pings, not reading at all.

Every read is bounded: `recv(timeout)` raises `RecvTimeout`; `wait_event`, `wait_ack` and
`wait_close` scan what was already received first (nothing is lost between waits), then read
more until their deadline. Server pings ("2") are answered with a pong ("3") unless
`auto_pong=False`.
"""

import json
import socket
import time

import websocket

DEFAULT_TIMEOUT = 10.0


class RecvTimeout(AssertionError):
    pass


class Closed:
    """A close frame (code, reason) or a connection that ended without one (code None)."""

    def __init__(self, code, reason, detail=""):
        self.code, self.reason, self.detail = code, reason, detail

    def __repr__(self):
        return f"Closed(code={self.code!r}, reason={self.reason!r}{', ' + self.detail if self.detail else ''})"


class RawClient:
    def __init__(self, public: str, path: str = "/socket.io/", query: str = "EIO=4&transport=websocket",
                 timeout: float = DEFAULT_TIMEOUT, auto_pong: bool = True, rcvbuf: int | None = None,
                 header: list | None = None, expect_open: bool = True):
        sockopt = []
        if rcvbuf is not None:
            sockopt.append((socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf))
        self.url = f"ws://{public}{path}?{query}"
        # websocket-client sends an Origin of its own unless told not to; native clients send
        # none, so neither do we unless a test passes one in `header`.
        has_origin = any(h.lower().startswith("origin:") for h in header or [])
        self.ws = websocket.create_connection(self.url, timeout=timeout, sockopt=tuple(sockopt),
                                              header=header or [], suppress_origin=not has_origin)
        self.auto_pong = auto_pong
        self.backlog: list = []  # received items not yet taken: str, bytes or Closed
        self.closed: Closed | None = None
        self.pings = 0
        self.sid = None
        self.open = None
        if expect_open:  # not on the WebSocket that upgrades a long-polling session
            first = self.recv(timeout)
            assert isinstance(first, str) and first.startswith("0"), f"expected an open packet, got {first!r}"
            self.open = json.loads(first[1:])

    # ----- low level ---------------------------------------------------------------------------

    def send(self, text: str) -> None:
        self.ws.send(text)

    def send_binary(self, data: bytes) -> None:
        self.ws.send_binary(data)

    def recv(self, timeout: float = DEFAULT_TIMEOUT):
        """Next text (str), binary (bytes) message or Closed, straight from the socket."""
        if self.closed is not None:
            return self.closed
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RecvTimeout(f"nothing received within {timeout} s")
            self.ws.settimeout(remaining)
            try:
                opcode, frame = self.ws.recv_data_frame(True)
            except websocket.WebSocketTimeoutException:
                raise RecvTimeout(f"nothing received within {timeout} s") from None
            except (websocket.WebSocketConnectionClosedException, ConnectionError, OSError) as e:
                self.closed = Closed(None, None, f"{type(e).__name__}: {e}")
                return self.closed
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                data = frame.data or b""
                code = int.from_bytes(data[:2], "big") if len(data) >= 2 else None
                self.closed = Closed(code, data[2:].decode("utf-8", "replace"))
                return self.closed
            if opcode in (websocket.ABNF.OPCODE_PING, websocket.ABNF.OPCODE_PONG):
                continue
            if opcode == websocket.ABNF.OPCODE_BINARY:
                return bytes(frame.data)
            text = frame.data.decode("utf-8")
            if text == "2":
                self.pings += 1
                if self.auto_pong:
                    self.send("3")
                continue
            return text

    def _take(self, match, timeout: float, what: str):
        """First backlog/new item for which match(item) is not None; returns that value."""
        for i, item in enumerate(self.backlog):
            v = match(item)
            if v is not None:
                del self.backlog[i]
                return v
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RecvTimeout(f"no {what} within {timeout} s; unmatched: {self.backlog[-10:]!r}")
            try:
                item = self.recv(remaining)
            except RecvTimeout:
                raise RecvTimeout(f"no {what} within {timeout} s; unmatched: {self.backlog[-10:]!r}") from None
            v = match(item)
            if v is not None:
                return v
            if isinstance(item, Closed):
                raise AssertionError(f"connection closed ({item!r}) while waiting for {what}; "
                                     f"unmatched: {self.backlog[-10:]!r}")
            self.backlog.append(item)

    # ----- Socket.IO -----------------------------------------------------------------------------

    def connect(self, token=None, auth=None, timeout: float = DEFAULT_TIMEOUT):
        """Sends CONNECT to "/" and returns the server's answer as (type, payload):
        ("connect", {"sid": ...}) or ("connect_error", {"message": ...})."""
        if auth is None and token is not None:
            auth = {"token": token}
        self.send("40" + (json.dumps(auth) if auth is not None else ""))

        def match(item):
            if isinstance(item, str) and item.startswith("40"):
                return ("connect", json.loads(item[2:]) if len(item) > 2 else None)
            if isinstance(item, str) and item.startswith("44"):
                return ("connect_error", json.loads(item[2:]))
            return None
        kind, payload = self._take(match, timeout, "CONNECT answer")
        if kind == "connect":
            self.sid = payload.get("sid") if isinstance(payload, dict) else None
        return kind, payload

    def emit(self, event: str, data=None, ack_id: int | None = None) -> None:
        args = [event] if data is None else [event, data]
        self.send("42" + ("" if ack_id is None else str(ack_id)) + json.dumps(args))

    def call(self, event: str, data=None, ack_id: int = 1, timeout: float = DEFAULT_TIMEOUT):
        self.emit(event, data, ack_id)
        return self.wait_ack(ack_id, timeout)

    def wait_ack(self, ack_id: int, timeout: float = DEFAULT_TIMEOUT):
        prefix = f"43{ack_id}["

        def match(item):
            if isinstance(item, str) and item.startswith(prefix):
                args = json.loads(item[len(prefix) - 1:])
                return args[0] if len(args) == 1 else args
            return None
        return self._take(match, timeout, f"ack {ack_id}")

    def wait_event(self, event: str, predicate=None, timeout: float = DEFAULT_TIMEOUT):
        def match(item):
            if isinstance(item, str) and item.startswith("42"):
                body = item[2:]
                i = 0
                while i < len(body) and body[i].isdigit():
                    i += 1
                args = json.loads(body[i:])
                if args and args[0] == event:
                    # The payload; a stored event's recovery offset may follow it.
                    data = args[1] if len(args) >= 2 else None
                    if predicate is None or predicate(data):
                        return (data,)
            return None
        return self._take(match, timeout, f"event {event!r}")[0]

    def wait_text(self, predicate, timeout: float = DEFAULT_TIMEOUT, what: str = "text packet"):
        return self._take(lambda it: it if isinstance(it, str) and predicate(it) else None,
                          timeout, what)

    def wait_close(self, timeout: float = DEFAULT_TIMEOUT) -> Closed:
        """Reads (keeping everything in the backlog) until the connection closes."""
        return self._take(lambda it: it if isinstance(it, Closed) else None, timeout, "close")

    def events(self, event: str) -> list:
        """Payloads of `event` packets sitting in the backlog (not taken by a wait)."""
        out = []
        for item in self.backlog:
            if isinstance(item, str) and item.startswith("42"):
                body = item[2:].lstrip("0123456789")
                args = json.loads(body)
                if args and args[0] == event:
                    out.append(args[1] if len(args) >= 2 else None)
        return out

    def close(self) -> None:
        try:
            self.ws.close(timeout=1)
        except Exception:  # already gone
            pass


def raw_connect(gateway, user_id=None, token=None, **kw) -> RawClient:
    """A RawClient that has completed CONNECT as `user_id` (or with `token`)."""
    c = RawClient(gateway.public, **kw)
    kind, payload = c.connect(token if token is not None else gateway.token(user_id))
    assert kind == "connect", f"CONNECT refused: {payload!r}"
    return c
