"""The certificate expiry monitor (renewal layer 3) of C_YUNO, end to end.

First as an operator meets it: a real echo yuno process with two TLS listeners
whose certificates are about to expire, run for several scans, its stdout JSON
log read after SIGTERM. The monitor must alert once per listener and level, not
once per scan. Then in-process: a renewal that brings a fresh certificate is
reported once as a recovery.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gobj import gobj_find_gobj, gobj_read_attr
from gobj.log import capture_logs

from tests.tls_certs import issue, make_ca
from tests.test_c_tcp_s import Certs, command, run, serial_of, settle, start_yuno

MAIN = Path(__file__).resolve().parent.parent

ALERTS = ("cert.expiry.critical", "cert.expiry.warning", "cert.expiry.recovered")


def _listener(cert: Any) -> dict[str, Any]:
    return {"library": "openssl", "ssl_certificate": str(cert.fullchain),
            "ssl_certificate_key": str(cert.key)}


def test_monitor_alerts_once_per_listener_in_a_yuno_process(tmp_path: Path) -> None:
    root = make_ca(tmp_path, "root")
    one_day = issue(root, tmp_path, "one", days=1)
    five_days = issue(root, tmp_path, "five", days=5)
    config = {
        "__json_config_variables__": {"__echo_url__": "tcps://127.0.0.1:0",
                                      "__echo_dtls_url__": "udp://127.0.0.1:0"},
        "yuno": {"yuno_name": "mon", "timeout_periodic": 100, "timeout_cert_check": 1},
        "global": {"echo_tls.crypto": _listener(one_day)},
        "services": [{"name": "echo", "children": [
            {"name": "second_tls", "gclass": "C_TCP_S", "as_service": True,
             "kw": {"url": "tcps://127.0.0.1:0", "crypto": _listener(five_days)}}]}],
    }
    cfg = tmp_path / "monitor.json"
    cfg.write_text(json.dumps(config))
    env = dict(os.environ, YUNETA_WORK_DIR=str(tmp_path / "var"))
    proc = subprocess.Popen([sys.executable, "-m", "yunos.echo", "-f", str(cfg)], cwd=MAIN,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        records = _read_until(proc, "yuno.playing", timeout=20)
        # Scans at start and then every second: at least four of them.
        time.sleep(3.6)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    records += [json.loads(line) for line in out.splitlines() if line.strip()]
    assert "yuno.stopping" in [r["msgid"] for r in records]

    alerts = [r for r in records if r["msgid"] in ALERTS]
    by_listener = {r["listener"].rsplit("^", 1)[1]: r for r in alerts}
    assert sorted((r["msgid"], r["listener"].rsplit("^", 1)[1]) for r in alerts) == [
        ("cert.expiry.critical", "echo_tls"), ("cert.expiry.warning", "second_tls")]

    critical, warning = by_listener["echo_tls"], by_listener["second_tls"]
    assert critical["level"] == "critical" and warning["level"] == "warning"
    assert critical["serial"] == serial_of(one_day) and critical["days_remaining"] == 0
    assert warning["serial"] == serial_of(five_days) and warning["days_remaining"] == 4
    for record, files in ((critical, one_day), (warning, five_days)):
        assert record["not_after"] == int(files.leaf.not_valid_after_utc.timestamp())
        assert record["gclass"] == "C_YUNO" and record["yuno"] == "echo^mon"
        assert record["url"].startswith("tcps://127.0.0.1:")
    assert (critical["threshold_days"], warning["threshold_days"]) == (2, 7)


def _read_until(proc: subprocess.Popen[str], msgid: str, timeout: float) -> list[dict[str, Any]]:
    assert proc.stdout is not None
    records: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"the yuno exited before {msgid}: {proc.stderr.read()}")
        records.append(json.loads(line))
        if records[-1]["msgid"] == msgid:
            return records
    raise AssertionError(f"no {msgid} within {timeout} s")


def test_renewal_to_a_fresh_certificate_is_reported_once(tmp_path: Path) -> None:
    certs = Certs(tmp_path)
    expiring = issue(certs.inter, tmp_path, "expiring", days=1)
    certs.install(expiring)

    async def body() -> list[dict[str, Any]]:
        with capture_logs("info") as records:
            start_yuno({"echo_tls": {"url": "tcps://127.0.0.1:0", "crypto": certs.crypto()}},
                       yuno_kw={"timeout_periodic": 50, "timeout_cert_check": 1})
            yuno = gobj_find_gobj("__yuno__")
            assert yuno is not None
            await settle(lambda: gobj_read_attr(yuno, "cert_checks") >= 1)

            certs.install(certs.b)  # what certbot and the deploy hook deliver
            answer = command("__yuno__", "reload-certs")
            assert answer["result"] == 0, answer
            checks = gobj_read_attr(yuno, "cert_checks")
            await settle(lambda: gobj_read_attr(yuno, "cert_checks") >= checks + 2, 10)
            await asyncio.sleep(0)
        return [r for r in records if r["msgid"] in ALERTS]

    alerts = run(body)
    assert [r["msgid"] for r in alerts] == ["cert.expiry.critical", "cert.expiry.recovered"]
    critical, recovered = alerts
    assert critical["serial"] == serial_of(expiring)
    assert recovered["serial"] == serial_of(certs.b)
    assert recovered["previous_level"] == "critical"
    assert recovered["days_remaining"] >= 364
    assert recovered["listener"] == critical["listener"]
