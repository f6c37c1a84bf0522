#!/usr/bin/env python3
"""Checks that a Cassandra (or ScyllaDB) node answers CQL, using only the standard library.

It speaks the native protocol v4 itself: OPTIONS (expects SUPPORTED), STARTUP (expects READY),
then `SELECT release_version FROM system.local` (expects a Rows result). Answering OPTIONS alone
is not enough: a node accepts CQL connections a moment before it can serve queries.

Usage: cql_ping.py [--host 127.0.0.1] [--port 9042] [--timeout 2]
Exit 0 and print the server's release_version when the node answers; exit 1 with the reason.
Also imported by tests/python/cassandra_util.py (function `ping`) and bench/cluster.py (`ping`,
and `execute` to drop the keyspace it made).
"""

import argparse
import socket
import struct
import sys

_VERSION = 0x04
_OP_ERROR, _OP_STARTUP, _OP_READY, _OP_OPTIONS, _OP_SUPPORTED = 0x00, 0x01, 0x02, 0x05, 0x06
_OP_QUERY, _OP_RESULT = 0x07, 0x08
_RESULT_ROWS = 0x0002
_CONSISTENCY_ONE = 0x0001


class CqlError(Exception):
    """The node did not answer CQL as expected; the message says what it did instead."""


def _frame(stream: int, opcode: int, body: bytes) -> bytes:
    return struct.pack(">BBhBI", _VERSION, 0, stream, opcode, len(body)) + body


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise CqlError("connection closed by the node mid-frame")
        buf += chunk
    return bytes(buf)


def _read_frame(sock: socket.socket) -> tuple[int, bytes]:
    version, _flags, _stream, opcode, length = struct.unpack(">BBhBI", _recv_exact(sock, 9))
    if version & 0x7F != _VERSION or not version & 0x80:
        raise CqlError(f"unexpected protocol version byte 0x{version:02x}")
    body = _recv_exact(sock, length)
    if opcode == _OP_ERROR:
        code = struct.unpack(">i", body[:4])[0]
        (mlen,) = struct.unpack(">H", body[4:6])
        raise CqlError(f"server error 0x{code:04x}: {body[6:6 + mlen].decode(errors='replace')}")
    return opcode, body


def _string(s: str) -> bytes:
    b = s.encode()
    return struct.pack(">H", len(b)) + b


class _Reader:
    def __init__(self, body: bytes):
        self.body, self.pos = body, 0

    def take(self, n: int) -> bytes:
        out = self.body[self.pos:self.pos + n]
        self.pos += n
        return out

    def int(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def short(self) -> int:
        return struct.unpack(">H", self.take(2))[0]

    def string(self) -> str:
        return self.take(self.short()).decode()


def _first_text_cell(body: bytes) -> str:
    """Returns the first column of the first row of a Rows result whose columns are text."""
    r = _Reader(body)
    if r.int() != _RESULT_ROWS:
        raise CqlError("query answered with a result that is not Rows")
    flags, ncols = r.int(), r.int()
    if flags & 0x0002:  # has_more_pages: a paging state follows
        r.take(r.int())
    if not flags & 0x0004:  # metadata present
        if flags & 0x0001:  # global table spec
            r.string(), r.string()
        for _ in range(ncols):
            if not flags & 0x0001:
                r.string(), r.string()
            r.string()
            r.short()  # type id; text/varchar carry no further option bytes
    if r.int() < 1:
        raise CqlError("system.local returned no row")
    n = r.int()
    return r.take(n).decode() if n >= 0 else ""


def ping(host: str = "127.0.0.1", port: int = 9042, timeout: float = 2.0) -> str:
    """Returns the node's release_version, or raises CqlError / OSError."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(_frame(0, _OP_OPTIONS, b""))
        opcode, _ = _read_frame(sock)
        if opcode != _OP_SUPPORTED:
            raise CqlError(f"OPTIONS answered with opcode 0x{opcode:02x}, not SUPPORTED")
        sock.sendall(_frame(1, _OP_STARTUP, struct.pack(">H", 1) + _string("CQL_VERSION") + _string("3.0.0")))
        opcode, _ = _read_frame(sock)
        if opcode != _OP_READY:
            raise CqlError(f"STARTUP answered with opcode 0x{opcode:02x}, not READY (authentication on?)")
        query = b"SELECT release_version FROM system.local"
        body = struct.pack(">i", len(query)) + query + struct.pack(">HB", _CONSISTENCY_ONE, 0)
        sock.sendall(_frame(2, _OP_QUERY, body))
        opcode, body = _read_frame(sock)
        if opcode != _OP_RESULT:
            raise CqlError(f"QUERY answered with opcode 0x{opcode:02x}, not RESULT")
        return _first_text_cell(body)


def execute(cql: str, host: str = "127.0.0.1", port: int = 9042, timeout: float = 30.0) -> None:
    """Runs one statement that returns no rows (e.g. `DROP KEYSPACE IF EXISTS ...`); raises
    CqlError / OSError when the node refuses it or does not answer."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(_frame(0, _OP_STARTUP, struct.pack(">H", 1) + _string("CQL_VERSION") + _string("3.0.0")))
        opcode, _ = _read_frame(sock)
        if opcode != _OP_READY:
            raise CqlError(f"STARTUP answered with opcode 0x{opcode:02x}, not READY (authentication on?)")
        query = cql.encode()
        body = struct.pack(">i", len(query)) + query + struct.pack(">HB", _CONSISTENCY_ONE, 0)
        sock.sendall(_frame(1, _OP_QUERY, body))
        opcode, _ = _read_frame(sock)
        if opcode != _OP_RESULT:
            raise CqlError(f"QUERY answered with opcode 0x{opcode:02x}, not RESULT")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9042)
    ap.add_argument("--timeout", type=float, default=2.0)
    args = ap.parse_args()
    try:
        version = ping(args.host, args.port, args.timeout)
    except (OSError, CqlError) as e:
        print(f"CQL not answering on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 1
    print(version)
    return 0


if __name__ == "__main__":
    sys.exit(main())
