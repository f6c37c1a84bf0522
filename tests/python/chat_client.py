"""A python-socketio client that records every event it receives, for black-box tests.

Events land in a thread-safe log; `wait_for(event, predicate, timeout)` returns the first
recorded event of that name that matches and has not been taken by an earlier wait, waiting
(bounded) only if it has not arrived yet. Tests synchronise on these events, never on sleeps.
"""

import threading
import time

import socketio

DEFAULT_TIMEOUT = 10.0


class ConnectFailed(Exception):
    """The server refused the Socket.IO connection (see ChatClient.connect_error)."""


class ChatClient:
    def __init__(self, name: str = "client"):
        self.name = name
        self.sio = socketio.Client(reconnection=False, logger=False, engineio_logger=False)
        self._cond = threading.Condition()
        self._events: list[tuple[str, object]] = []  # (event, payload), in arrival order
        self._taken: set[int] = set()
        self.connect_error = None  # payload of the last connect_error, if any

        @self.sio.on("*")
        def _any(event, *args):
            self._record(event, args[0] if len(args) == 1 else list(args))

        @self.sio.event
        def connect():
            self._record("connect", None)

        @self.sio.event
        def connect_error(data):
            self.connect_error = data
            self._record("connect_error", data)

        @self.sio.event
        def disconnect(*args):
            self._record("disconnect", args[0] if args else None)

    def _record(self, event: str, payload) -> None:
        with self._cond:
            self._events.append((event, payload))
            self._cond.notify_all()

    def connect(self, url: str, token, transports=None, timeout: float = 10.0,
                headers: dict | None = None) -> "ChatClient":
        auth = {"token": token} if token is not None else None
        try:
            self.sio.connect(url, transports=list(transports) if transports else None, auth=auth,
                             socketio_path="/socket.io/", wait_timeout=timeout,
                             headers=headers or {})
        except socketio.exceptions.ConnectionError as e:
            raise ConnectFailed(f"{self.name}: {e}; connect_error={self.connect_error!r}") from e
        return self

    # ----- sending ---------------------------------------------------------------------------

    def call(self, event: str, data, timeout: float = DEFAULT_TIMEOUT):
        """Emits `event` asking for an ack and returns the ack payload (bounded wait)."""
        return self.sio.call(event, data, timeout=timeout)

    def send_message(self, gid: str, text: str, **extra) -> dict:
        """Sends a chat message to group `gid` and returns its ack, which must be `ok`
        (`extra` adds fields such as `clientMsgId`)."""
        ack = self.call("sendMessage", {"groupId": gid, "text": text, "attachments": [], **extra})
        assert ack.get("ok") is True, f"sendMessage {text!r} -> {ack!r}"
        return ack

    def emit(self, event: str, data) -> None:
        """Emits `event` without asking for an ack (failures then arrive as `error` events)."""
        self.sio.emit(event, data)

    # ----- receiving -------------------------------------------------------------------------

    def wait_for(self, event: str, predicate=None, timeout: float = DEFAULT_TIMEOUT):
        """Returns the payload of the first not-yet-taken `event` matching `predicate`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i, (name, payload) in enumerate(self._events):
                    if i in self._taken or name != event:
                        continue
                    if predicate is None or predicate(payload):
                        self._taken.add(i)
                        return payload
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [n for n, _ in self._events]
                    raise AssertionError(
                        f"{self.name}: no matching {event!r} within {timeout} s; "
                        f"events seen: {seen[-20:]}; last payloads: {self._events[-5:]!r}")
                self._cond.wait(remaining)

    def assert_no_event(self, event: str, predicate=None, within: float = 1.0) -> None:
        """For negative checks only ("user 3 must not receive this"): waits `within` seconds
        and fails if a matching event arrives. Prefer sending a later, positive marker event
        and waiting for it, when the protocol offers one."""
        try:
            payload = self.wait_for(event, predicate, timeout=within)
        except AssertionError:
            return
        raise AssertionError(f"{self.name}: unexpected {event!r}: {payload!r}")

    def events(self, event: str | None = None) -> list:
        with self._cond:
            return [p for n, p in self._events if event is None or n == event]

    def close(self) -> None:
        try:
            self.sio.disconnect()
        except Exception:  # already gone; nothing to clean up
            pass
