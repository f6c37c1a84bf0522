"""End-to-end tests of offline email notices (issue 5, items 2, 3 and 5) with real processes:

    chat clients -> corecast serve (embedded store) -> outbox in CORECAST_DATA_DIR
                 -> corecast-notifier (same CORECAST_DATA_DIR) -> SMTP (scripts/smtp_server.py)

and the tests read the mail that arrived in the SMTP server's maildir. Synchronisation is on
state (maildir files, the notifier's /metrics, acks and events), polled with bounded timeouts.

Which notifier binary: $CORECAST_NOTIFIER_BIN, else target/release/corecast-notifier.
"""

import email
import email.policy
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from gateway_process import REPO_ROOT, release_binary
from polling import poll

READY_RE = re.compile(r"^corecast-notifier ready internal=(?P<internal>\S+)\s*$")
MAIL_TIMEOUT = 30.0


def _poll(what: str, fn, timeout: float, interval: float = 0.05):
    return poll(what, fn, timeout, interval)


# ----- processes ---------------------------------------------------------------------------


class SmtpServer:
    """scripts/smtp_server.py on a free loopback port, storing mail in `maildir`."""

    def __init__(self, maildir: Path, log_path: Path):
        self.maildir = Path(maildir)
        self.log_path = Path(log_path)
        self.port = None
        self.proc = None

    def start(self, timeout: float = 15.0) -> "SmtpServer":
        self.maildir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab", buffering=0)
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "scripts/smtp_server.py"), "--port", "0",
             "--maildir", str(self.maildir)],
            stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, text=True)
        got = threading.Event()

        def read():
            for line in self.proc.stdout:
                if line.startswith("SMTP READY ") and not got.is_set():
                    self.port = int(line.split()[2])
                    got.set()

        threading.Thread(target=read, daemon=True).start()
        if not got.wait(timeout):
            self.stop()
            raise AssertionError(f"smtp_server.py printed no 'SMTP READY' in {timeout} s; "
                                 f"log {self.log_path}:\n{self.log_path.read_text()}")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def mails(self) -> list[dict]:
        """Every stored mail, in arrival order: {"meta", "msg", "subject", "text", "html"}."""
        out = []
        for meta_path in sorted(self.maildir.glob("*.json"), key=lambda p: int(p.stem)):
            meta = json.loads(meta_path.read_text())
            raw = (self.maildir / f"{meta_path.stem}.eml").read_bytes()
            msg = email.message_from_bytes(raw, policy=email.policy.default)
            text = html = None
            for part in msg.walk():
                if part.get_content_type() == "text/plain" and text is None:
                    text = part.get_content()
                elif part.get_content_type() == "text/html" and html is None:
                    html = part.get_content()
            out.append({"meta": meta, "msg": msg, "subject": str(msg["Subject"]),
                        "text": text, "html": html, "raw": raw})
        return out

    def mails_to(self, address: str) -> list[dict]:
        return [m for m in self.mails() if address in m["meta"]["rcpt_tos"]]


def notifier_binary() -> Path:
    return release_binary("corecast-notifier", "CORECAST_NOTIFIER_BIN")


class NotifierProcess:
    """`corecast-notifier` on the gateway's data dir, sending to `smtp`."""

    def __init__(self, data_dir: Path, smtp_port: int, log_path: Path, coalesce_secs: int,
                 env: dict | None = None):
        self.log_path = Path(log_path)
        self.env = {
            "CORECAST_DATA_DIR": str(data_dir),
            "CORECAST_SMTP_HOST": "127.0.0.1",
            "CORECAST_SMTP_PORT": str(smtp_port),
            "CORECAST_SMTP_TLS": "none",
            "CORECAST_NOTIFY_COALESCE_SECS": str(coalesce_secs),
            "CORECAST_NOTIFY_RETRY_INITIAL_MS": "200",
            "CORECAST_NOTIFY_RETRY_MAX_MS": "2000",
            "CORECAST_NOTIFIER_LISTEN": "127.0.0.1:0",
            "RUST_LOG": os.environ.get("RUST_LOG", "info"),
        }
        self.env.update({k: str(v) for k, v in (env or {}).items()})
        self.proc = None
        self.internal = None
        self._log = None

    def start(self, timeout: float = 30.0) -> "NotifierProcess":
        env = {k: v for k, v in os.environ.items() if not k.startswith("CORECAST_")}
        env.update(self.env)
        self._log = open(self.log_path, "ab", buffering=0)
        self._log.write(b"=== start corecast-notifier ===\n")
        self.proc = subprocess.Popen([str(notifier_binary())], env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        ready = threading.Event()
        found = {}

        def drain(stream):
            for line in iter(stream.readline, b""):
                self._log.write(line)
                m = READY_RE.match(line.decode("utf-8", "replace"))
                if m and not ready.is_set():
                    found.update(m.groupdict())
                    ready.set()

        threading.Thread(target=drain, args=(self.proc.stdout,), daemon=True).start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill9()
                raise AssertionError(f"corecast-notifier did not get ready; log {self.log_path}:"
                                     f"\n{self.log_tail()}")
        self.internal = found["internal"]
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def metrics(self) -> dict[str, float]:
        r = requests.get(f"http://{self.internal}/metrics", timeout=5)
        assert r.status_code == 200, r.text
        out = {}
        for line in r.text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def metric(self, name: str) -> float:
        return self.metrics()[f"corecast_notifier_{name}"]

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


@pytest.fixture
def smtp(tmp_path, request):
    server = SmtpServer(tmp_path / "mail", tmp_path / "smtp.log").start()
    yield server
    server.stop()


@pytest.fixture
def start_notifier(tmp_path, request):
    """Factory: start_notifier(gateway, smtp, coalesce_secs) -> started NotifierProcess."""
    started = []

    def start(gw, smtp_server, coalesce_secs, **env):
        n = NotifierProcess(gw.data_dir, smtp_server.port, tmp_path / f"notifier{len(started)}.log",
                            coalesce_secs, env)
        started.append(n)
        return n.start()

    yield start
    failed = any(getattr(getattr(request.node, f"rep_{w}", None), "failed", False)
                 for w in ("setup", "call"))
    for n in started:
        n.stop()
        if failed:
            print(f"\n----- {n.log_path} (last 60 lines) -----\n{n.log_tail()}")


# ----- helpers -------------------------------------------------------------------------------


def put_user(gw, uid: int, email_addr: str | None, name: str):
    """PUT /api/users/{uid}; email_addr=None makes a user without an email address."""
    r = gw.admin("PUT", f"/api/users/{uid}", {"email": email_addr, "name": name})
    assert 200 <= r.status_code < 300, f"PUT user {uid} -> {r.status_code}: {r.text}"


def joined(client, gid):
    ack = client.call("joinGroup", {"groupId": gid})
    assert ack.get("ok") is True, ack
    return client


def addr(uid: int) -> str:
    return f"user{uid}@example.test"


def wait_settled(notifier, timeout: float = MAIL_TIMEOUT, **at_least):
    """Waits until the notifier's outbox is empty and each counter named in `at_least`
    (counter names without `corecast_notifier_` and `_total`, e.g. sent=1,
    skipped_no_email=3) has reached its value; returns the metrics."""
    def ok():
        m = notifier.metrics()
        if m["corecast_notifier_pending"] != 0:
            return None
        for k, v in at_least.items():
            if m[f"corecast_notifier_{k}_total"] < v:
                return None
        return m
    return _poll(f"notifier outbox empty with counters >= {at_least}", ok, timeout, 0.1)


# ----- tests ---------------------------------------------------------------------------------

TRICKY = '<b>&"quotes"</b>'


def test_burst_to_offline_member_is_one_email(start_gateway, smtp, start_notifier, new_id,
                                              connect):
    """Sender 1 online, member 2 offline with email, 3 online with email, 4 offline without
    email. Three messages become exactly one email, to 2 only; 4 is skipped and counted."""
    gw = start_gateway()
    notifier = start_notifier(gw, smtp, coalesce_secs=2)
    u1, u2, u3, u4 = (new_id() for _ in range(4))
    put_user(gw, u1, addr(u1), "Alice Sender")
    put_user(gw, u2, addr(u2), "Bob Offline")
    put_user(gw, u3, addr(u3), "Carol Online")
    put_user(gw, u4, None, "Dave NoMail")
    gid = f"team berlin ☕ {new_id()}"  # a string id with a space and unicode, as the app's are
    gw.put_group(gid, [u1, u2, u3, u4], "Team")

    c1 = joined(connect(gw, u1), gid)
    c3 = joined(connect(gw, u3), gid)
    texts = ["first hello from alice", f"second with {TRICKY} inside", "third and last"]
    acks = [c1.send_message(gid, t) for t in texts]
    for a in acks:  # user 3 really is online and in the room
        c3.wait_for("newMessage", lambda m, a=a: m.get("id") == a["id"])

    mail = _poll("an email for user 2", lambda: smtp.mails_to(addr(u2)), MAIL_TIMEOUT)
    m = wait_settled(notifier, sent=1, notices_sent=3, skipped_no_email=3)

    mails = smtp.mails()
    assert len(mails) == 1, f"expected exactly one email, got {[x['meta'] for x in mails]}"
    mail = mail[0]
    assert mail["meta"]["rcpt_tos"] == [addr(u2)], mail["meta"]
    assert addr(u2) in str(mail["msg"]["To"]), mail["msg"]["To"]
    assert "Team" in mail["subject"], mail["subject"]
    assert "Alice Sender" in mail["subject"], mail["subject"]
    # The Message-ID names the group, percent-encoded so the header stays valid.
    enc = gid.replace(" ", "%20").replace("☕", "%E2%98%95")
    assert f"-{enc}-" in str(mail["msg"]["Message-ID"]), mail["msg"]["Message-ID"]

    assert mail["text"] is not None, "no text/plain part"
    assert mail["html"] is not None, "no text/html part"
    for t in texts:
        assert t in mail["text"], f"plain text part misses {t!r}:\n{mail['text']}"
    assert "Team" in mail["text"] and "Alice Sender" in mail["text"], mail["text"]

    html = mail["html"]
    for t in (texts[0], texts[2]):
        assert t in html, f"HTML part misses {t!r}:\n{html}"
    assert TRICKY not in html, f"user text reached the HTML part unescaped:\n{html}"
    assert "&lt;b&gt;&amp;&quot;quotes&quot;&lt;/b&gt;" in html, html

    assert m["corecast_notifier_skipped_no_email_total"] == 3, m
    assert m["corecast_notifier_failed_total"] == 0, m
    assert m["corecast_notifier_sent_total"] == 1, m
    assert not smtp.mails_to(addr(u3)), "online user 3 got an email"
    assert not smtp.mails_to(addr(u1)), "the sender got an email"


def test_member_online_before_window_closes_gets_no_email(start_gateway, smtp, start_notifier,
                                                          new_id, connect):
    """Messages arrive while 2 and a control member 5 are offline; 2 connects before the
    5 s coalescing window ends: 5 gets the email, 2 gets none (skipped_online)."""
    coalesce = 5
    gw = start_gateway()
    notifier = start_notifier(gw, smtp, coalesce_secs=coalesce)
    sender, late, control = new_id(), new_id(), new_id()
    put_user(gw, sender, addr(sender), "Sam Sender")
    put_user(gw, late, addr(late), "Lena Late")
    put_user(gw, control, addr(control), "Carl Control")
    gid = new_id()
    gw.put_group(gid, [sender, late, control], "Team")

    cs = joined(connect(gw, sender), gid)
    t0 = time.monotonic()
    acks = [cs.send_message(gid, f"while you were away {i}") for i in range(2)]
    cl = joined(connect(gw, late), gid)  # comes online and can read the history now
    connected_after = time.monotonic() - t0
    assert connected_after < coalesce - 1, (
        f"test setup too slow: user connected {connected_after:.1f} s after the first send, "
        f"the {coalesce} s window may already have closed")
    hist_ids = {m["id"] for m in gw.history(gid)}
    assert {a["id"] for a in acks} <= hist_ids

    mail = _poll("the control member's email", lambda: smtp.mails_to(addr(control)),
                 coalesce + MAIL_TIMEOUT)
    m = wait_settled(notifier, sent=1, skipped_online=2)
    assert len(mail) == 1, [x["meta"] for x in mail]
    assert not smtp.mails_to(addr(late)), "the member who came online still got an email"
    assert len(smtp.mails()) == 1, [x["meta"] for x in smtp.mails()]
    assert m["corecast_notifier_skipped_online_total"] == 2, m
    assert cl.sio.connected


def test_notifier_started_later_after_gateway_restarts_sends_everything(
        start_gateway, smtp, start_notifier, new_id, connect):
    """The notices survive in the store: messages sent, gateway restarted gracefully, more
    messages, gateway killed with SIGKILL and started again, and only then the notifier
    starts: the offline member's emails quote every message exactly once."""
    gw = start_gateway()
    sender, offline = new_id(), new_id()
    put_user(gw, sender, addr(sender), "Sam Sender")
    put_user(gw, offline, addr(offline), "Olga Offline")
    gid = new_id()
    gw.put_group(gid, [sender, offline], "Team")

    texts = []
    c = joined(connect(gw, sender), gid)
    for i in range(3):
        texts.append(f"before graceful restart {i}")
        c.send_message(gid, texts[-1])
    c.close()
    gw.restart()
    c = joined(connect(gw, sender), gid)
    for i in range(3):
        texts.append(f"before kill nine {i}")
        c.send_message(gid, texts[-1])
    c.close()
    gw.kill9()
    gw.start()
    assert sorted(m["text"] for m in gw.history(gid)) == sorted(texts)

    notifier = start_notifier(gw, smtp, coalesce_secs=1)
    wait_settled(notifier, notices_sent=len(texts))
    mails = smtp.mails()
    assert mails, "no email at all"
    assert all(m["meta"]["rcpt_tos"] == [addr(offline)] for m in mails), \
        [m["meta"] for m in mails]
    for t in texts:
        n = sum(m["text"].count(t) for m in mails)
        assert n == 1, f"{t!r} quoted {n} times across {len(mails)} emails"
    assert notifier.metric("sent_total") == len(mails)


def test_notifier_killed_mid_batch_still_sends_every_notice(start_gateway, smtp, start_notifier,
                                                            new_id, connect):
    """Many offline members each owe one email; the notifier is SIGKILLed after the first email
    arrived and started again: every member gets their email (at least once)."""
    gw = start_gateway()
    sender = new_id()
    put_user(gw, sender, addr(sender), "Sam Sender")
    members = [new_id() for _ in range(30)]
    for u in members:
        put_user(gw, u, addr(u), f"Member {u}")
    gid = new_id()
    gw.put_group(gid, [sender] + members, "Team")
    c = joined(connect(gw, sender), gid)
    c.send_message(gid, "a message for thirty offline members")

    first = start_notifier(gw, smtp, coalesce_secs=1)
    _poll("the first email", lambda: smtp.mails(), MAIL_TIMEOUT, 0.01)
    first.kill9()
    got_before_kill = {r for m in smtp.mails() for r in m["meta"]["rcpt_tos"]}
    print(f"notifier killed after {len(got_before_kill)} of {len(members)} emails")
    start_notifier(gw, smtp, coalesce_secs=1)
    wanted = {addr(u) for u in members}

    def missing():
        return wanted - {r for m in smtp.mails() for r in m["meta"]["rcpt_tos"]}
    try:
        _poll("an email for every member", lambda: not missing(), MAIL_TIMEOUT, 0.1)
    except AssertionError:
        raise AssertionError(f"no email for {sorted(missing())} (before the kill "
                             f"{len(got_before_kill)} had theirs)") from None
    got = {r for m in smtp.mails() for r in m["meta"]["rcpt_tos"]}
    assert addr(sender) not in got
    # Duplicates are allowed only across the crash and carry the same Message-ID.
    by_rcpt = {}
    for m in smtp.mails():
        by_rcpt.setdefault(m["meta"]["rcpt_tos"][0], set()).add(str(m["msg"]["Message-ID"]))
    assert all(len(ids) == 1 for ids in by_rcpt.values()), by_rcpt


def test_loadgen_offline_members_get_every_notice_by_email(start_gateway, smtp, start_notifier,
                                                           tmp_path):
    """`corecast-loadgen --offline-members 1`: each group gets one member who never connects,
    so every message the loadgen sends leaves one notice. With the notifier running, each
    message reaches its group's offline member by email, and nobody else gets one."""
    gw = start_gateway()
    notifier = start_notifier(gw, smtp, coalesce_secs=1)
    report_path = tmp_path / "loadgen.json"
    conns, group_size = 20, 10
    loadgen = release_binary("corecast-loadgen", "CORECAST_LOADGEN_BIN")
    run = subprocess.run(
        [str(loadgen), "--target", gw.public, "--admin", gw.internal,
         "--admin-token", gw.admin_token, "--jwt-secret", gw.jwt_secret,
         "--conns", str(conns), "--group-size", str(group_size), "--offline-members", "1",
         "--rate", "10", "--duration", "2", "--warmup", "0.5", "--json", str(report_path),
         "--quiet"],
        capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, f"loadgen failed:\n{run.stdout}\n{run.stderr}"
    report = json.loads(report_path.read_text())
    assert report["config"]["offline_members"] == 1, report["config"]
    assert report["errors_total"] == 0, report["errors"]
    assert report["send"]["lost"] == 0, report["send"]
    sent = report["send"]["sent"]
    assert sent > 0, report["send"]

    m = wait_settled(notifier, notices_sent=sent)
    assert m["corecast_notifier_notices_sent_total"] == sent, m
    assert m["corecast_notifier_failed_total"] == 0, m
    # The loadgen numbers its connecting users 1..conns and the offline ones after them.
    offline = {f"bench{conns + 1 + g}@example.test" for g in range(conns // group_size)}
    rcpts = {r for mail in smtp.mails() for r in mail["meta"]["rcpt_tos"]}
    assert rcpts == offline, f"emails went to {sorted(rcpts)}, expected {sorted(offline)}"
