"""Start-up refusals of `corecast serve`: settings that would leave the gateway open to forged
tokens stop it before it listens, with a message that names the setting to change.

The refused starts never bind their listener (the check runs first), so a non-loopback
address such as 0.0.0.0 is safe to name here."""

import os
import subprocess
import time

import jwt

from gateway_process import gateway_binary

DEV_SECRET = "corecast-development-secret-do-not-use-in-production"  # config/src/auth.rs DEV_JWT_SECRET
START_TIMEOUT = 30


def _serve(tmp_path, **env):
    """Runs `corecast serve` with only `env` as CORECAST_* settings, expecting it to exit."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("CORECAST_")}
    full.update({
        "CORECAST_INTERNAL_LISTEN": "127.0.0.1:0",
        "CORECAST_SHARDS": "1",
        "CORECAST_DATA_DIR": str(tmp_path / "data"),
        "CORECAST_ADMIN_TOKEN": "corecast-test-admin-token",
    })
    full.update(env)
    return subprocess.run([str(gateway_binary()), "serve"], env=full, cwd=tmp_path,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=START_TIMEOUT)


def test_development_secret_on_a_public_listener_is_refused(tmp_path):
    for secret in ("", DEV_SECRET):  # unset (the default), or the same text configured
        out = _serve(tmp_path, CORECAST_LISTEN="0.0.0.0:0", CORECAST_JWT_SECRET=secret)
        assert out.returncode != 0, out
        assert "CORECAST_JWT_SECRET" in out.stderr and "development" in out.stderr, out.stderr
        assert "corecast listening" not in out.stdout, out.stdout


def test_short_secret_is_refused_naming_the_variable(tmp_path):
    out = _serve(tmp_path, CORECAST_LISTEN="127.0.0.1:0", CORECAST_JWT_SECRET="x" * 31)
    assert out.returncode != 0, out
    assert "CORECAST_JWT_SECRET" in out.stderr and "32 bytes" in out.stderr, out.stderr
    assert "corecast listening" not in out.stdout, out.stdout


def test_development_secret_still_serves_on_loopback(start_gateway, connect, make_group):
    gw = start_gateway(CORECAST_JWT_SECRET="")
    assert "DEVELOPMENT secret" in gw.log_tail(40)
    gid, (u,) = make_group(gw, 1)
    now = int(time.time())
    token = jwt.encode({"sub": u, "exp": now + 600}, DEV_SECRET, algorithm="HS256")
    c = connect(gw, token=token)
    assert c.call("joinGroup", {"groupId": gid})["ok"] is True
