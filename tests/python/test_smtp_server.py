"""Proves the SMTP test harness itself (scripts/smtp_server.py): delivery and fault modes."""

import json
import os
import smtplib
import subprocess
import sys
import threading
from email.message import EmailMessage
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def smtp_server(tmp_path):
    """Starts scripts/smtp_server.py on a free port; yields (port, maildir)."""
    maildir = tmp_path / "mail"
    proc = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "scripts/smtp_server.py"), "--port", "0",
         "--maildir", str(maildir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    ready = {}
    got = threading.Event()

    def read_ready():
        for line in proc.stdout:
            if line.startswith("SMTP READY "):
                ready["port"] = int(line.split()[2])
                got.set()
                break

    threading.Thread(target=read_ready, daemon=True).start()
    if not got.wait(15):
        proc.kill()
        out, err = proc.communicate(timeout=5)
        pytest.fail(f"smtp_server.py did not print 'SMTP READY' within 15 s; stderr:\n{err}")
    yield ready["port"], maildir
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _set_mode(maildir: Path, mode: str) -> None:
    tmp = maildir / ".mode.tmp"
    tmp.write_text(mode + "\n")
    os.replace(tmp, maildir / ".mode")


def _message(to: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "corecast@example.test"
    msg["To"] = to
    msg["Subject"] = "New messages in general"
    msg.set_content("You have 1 new message.")
    return msg


def test_message_is_stored_with_envelope(smtp_server):
    port, maildir = smtp_server
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        s.send_message(_message("bob@example.test"))
    meta = json.loads((maildir / "1.json").read_text())
    assert meta["mail_from"] == "corecast@example.test"
    assert meta["rcpt_tos"] == ["bob@example.test"]
    raw = (maildir / "1.eml").read_bytes()
    assert b"Subject: New messages in general" in raw
    assert b"You have 1 new message." in raw


def test_fault_modes_switch_without_restart(smtp_server):
    port, maildir = smtp_server
    _set_mode(maildir, "tempfail")
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
            s.send_message(_message("bob@example.test"))
    assert e.value.recipients["bob@example.test"][0] == 451

    _set_mode(maildir, "permfail")
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
            s.send_message(_message("bob@example.test"))
    assert e.value.recipients["bob@example.test"][0] == 550
    assert not list(maildir.glob("*.eml"))

    _set_mode(maildir, "ok")
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        s.send_message(_message("bob@example.test"))
    assert (maildir / "1.json").exists()
