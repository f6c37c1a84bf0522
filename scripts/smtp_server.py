#!/usr/bin/env python3
"""A real SMTP server on loopback for corecast's tests (the notifier's mail server).

    python3 scripts/smtp_server.py --port 2525 --maildir /tmp/mail [--host 127.0.0.1]

Prints `SMTP READY <port>` on stdout once it listens (`--port 0` picks a free port).

Each accepted message is stored as `<maildir>/<n>.eml` (the raw message, as received) and then
`<maildir>/<n>.json` ({"n", "mail_from", "rcpt_tos", "peer", "received_at", "size"}), numbered
from 1 on. Both are written to a temporary name and renamed, and the sidecar comes last, so a
reader that sees `<n>.json` can read both files whole.

Fault mode, switched at run time without a restart: the first word of `<maildir>/.mode` is
read on every command.
    ok        (or no file)  accept mail
    tempfail  answer 451 to RCPT TO and DATA (the sender should retry later)
    permfail  answer 550 to RCPT TO and DATA (the sender should give up on that recipient)
A test switches modes by writing the file (write a temp file and rename it, to be atomic).
"""

import argparse
import asyncio
import itertools
import json
import os
import re
import signal
import sys
import time

from aiosmtpd.smtp import SMTP

MODE_FILE = ".mode"
_REPLIES = {
    "tempfail": "451 4.3.0 Temporary failure (test fault mode)",
    "permfail": "550 5.7.1 Rejected (test fault mode)",
}


def log(msg: str) -> None:
    print(f"smtp_server: {msg}", file=sys.stderr, flush=True)


class MaildirHandler:
    """aiosmtpd handler: applies the fault mode and stores accepted messages."""

    def __init__(self, maildir: str):
        self.maildir = maildir
        existing = [int(m.group(1)) for f in os.listdir(maildir)
                    if (m := re.fullmatch(r"(\d+)\.eml", f))]
        self._numbers = itertools.count(max(existing, default=0) + 1)

    def mode(self) -> str:
        try:
            with open(os.path.join(self.maildir, MODE_FILE), encoding="utf-8") as f:
                words = f.read().split()
        except FileNotFoundError:
            return "ok"
        mode = words[0].lower() if words else "ok"
        if mode not in ("ok", *_REPLIES):
            log(f"unknown mode {mode!r} in {MODE_FILE}; acting as 'ok'")
            return "ok"
        return mode

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        mode = self.mode()
        if mode in _REPLIES:
            log(f"RCPT TO:<{address}> refused ({mode})")
            return _REPLIES[mode]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        mode = self.mode()
        if mode in _REPLIES:
            log(f"DATA from <{envelope.mail_from}> refused ({mode})")
            return _REPLIES[mode]
        n = next(self._numbers)
        content = envelope.original_content or envelope.content or b""
        if isinstance(content, str):
            content = content.encode("utf-8")
        meta = {
            "n": n,
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "peer": list(session.peer) if isinstance(session.peer, tuple) else str(session.peer),
            "received_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "size": len(content),
        }
        self._write_atomic(f"{n}.eml", content)
        self._write_atomic(f"{n}.json", json.dumps(meta, indent=1).encode("utf-8"))
        log(f"stored message {n} from <{envelope.mail_from}> to {envelope.rcpt_tos}")
        return "250 Message accepted for delivery"

    def _write_atomic(self, name: str, data: bytes) -> None:
        final = os.path.join(self.maildir, name)
        tmp = os.path.join(self.maildir, f".{name}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)


async def serve(host: str, port: int, maildir: str) -> None:
    handler = MaildirHandler(maildir)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="corecast-test-smtp", data_size_limit=10 * 1024 * 1024),
        host=host, port=port, reuse_address=True)
    bound = server.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log(f"listening on {host}:{bound}, maildir {maildir}, mode {handler.mode()}")
    print(f"SMTP READY {bound}", flush=True)
    await stop.wait()
    server.close()
    await server.wait_closed()
    log("stopped")


def main() -> int:
    ap = argparse.ArgumentParser(description="SMTP server on loopback for tests")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True, help="0 picks a free port")
    ap.add_argument("--maildir", required=True, help="created if missing")
    args = ap.parse_args()
    os.makedirs(args.maildir, exist_ok=True)
    asyncio.run(serve(args.host, args.port, os.path.abspath(args.maildir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
