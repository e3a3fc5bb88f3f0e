"""What the agent's cert sync counts as a change in the store, and a TLS client
C_TCP that verifies the server (the two pieces the process tests reach only
indirectly)."""

from __future__ import annotations

import asyncio
import os
import shutil

from gobj import gobj_create, gobj_create_yuno, gobj_end, gobj_send_event, gobj_start, kernel
from gobj import EVF, gclass_create
from gobj.gclass import gclass_unregister
from gclasses.c_agent import fingerprint_store
from gclasses.c_echo import register_c_echo
from gclasses.c_tcp import C_TCP, register_c_tcp
from gclasses.c_tcp_s import register_c_tcp_s
from gclasses.c_yuno import C_YUNO, register_c_yuno
from tests.kernel_helpers import unique
from tests.tls_certs import issue, make_ca


def _store(tmp_path, name="store"):
    store = tmp_path / name
    (store / "private").mkdir(parents=True)
    (store / "a.crt").write_bytes(b"CERT-ONE")
    (store / "private" / "a.key").write_bytes(b"KEY-ONE!")
    return store


def test_content_change_that_keeps_size_and_mtime_is_seen(tmp_path):
    store = _store(tmp_path)
    before = fingerprint_store(str(store))
    st = os.stat(store / "a.crt")
    (store / "a.crt").write_bytes(b"CERT-TWO")  # same size
    os.utime(store / "a.crt", ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime
    after = fingerprint_store(str(store))
    assert after != before and after["a.crt"] != before["a.crt"]
    assert fingerprint_store(str(store)) == after  # and nothing changes by itself


def test_key_only_change_is_seen(tmp_path):
    store = _store(tmp_path)
    before = fingerprint_store(str(store))
    (store / "private" / "a.key").write_bytes(b"KEY-TWO!")
    assert fingerprint_store(str(store)) != before


def test_symlink_swap_and_directory_swap_are_seen(tmp_path):
    v1, v2 = _store(tmp_path, "v1"), _store(tmp_path, "v2")
    (v2 / "a.crt").write_bytes(b"CERT-NEW")
    live = tmp_path / "live"
    live.symlink_to(v1)
    before = fingerprint_store(str(live))
    tmp_link = tmp_path / "live.new"
    tmp_link.symlink_to(v2)
    os.replace(tmp_link, live)  # the atomic symlink swap Kubernetes and certbot use
    assert fingerprint_store(str(live)) != before
    real = tmp_path / "real"
    shutil.copytree(v1, real)
    before = fingerprint_store(str(real))
    shutil.rmtree(real)
    shutil.copytree(v2, real)  # the whole directory replaced
    assert fingerprint_store(str(real)) != before


def test_tls_client_connects_verifies_and_refuses_a_wrong_name(tmp_path):
    """A C_TCP client with tcps:// reaches a C_TCP_S echo, checks the server's
    certificate against the CA and the name, and echoes; a wrong expected name
    is refused and no EV_CONNECTED is published."""
    register_c_yuno(), register_c_tcp(), register_c_tcp_s(), register_c_echo()
    ca = make_ca(tmp_path, "ca")
    files = issue(ca, tmp_path, "srv", cn="localhost")
    events: list[tuple[str, object]] = []
    name = unique("C_CLIENT_PROBE")

    def record(gobj, event, kw, src):
        events.append((event, kw.get("data")))
        return 0

    gclass_create(name, event_types=[(e, EVF.NONE) for e in (
        "EV_CONNECTED", "EV_DISCONNECTED", "EV_RX_DATA", "EV_TX_READY")],
        states=[("ST", [(e, record, None) for e in (
            "EV_CONNECTED", "EV_DISCONNECTED", "EV_RX_DATA", "EV_TX_READY")])])

    async def main() -> None:
        kernel.loop = asyncio.get_running_loop()
        yuno = gobj_create_yuno("c", C_YUNO, {"timeout_cert_check": 0})
        echo = gobj_create("echo", "C_ECHO", {}, yuno, default_service=True)
        srv = gobj_create("srv", "C_TCP_S", {"url": "tcps://127.0.0.1:0",
                                             "crypto": files.crypto()}, echo)
        gobj_start(srv)
        await asyncio.sleep(0.05)
        port = srv.read("lPort")
        probe = gobj_create("probe", name, {}, yuno)
        for server_name, expect_ok in (("localhost", True), ("wrong.example", False)):
            events.clear()
            cli = gobj_create(f"cli-{server_name}", C_TCP, {
                "url": f"tcps://127.0.0.1:{port}", "timeout_between_connections": 0,
                "crypto": {"ssl_trusted_certificate": str(ca.cert_path),
                           "ssl_server_name": server_name}, "subscriber": probe}, yuno)
            gobj_start(cli)
            gobj_send_event(cli, "EV_CONNECT", {}, yuno)
            for _ in range(100):
                await asyncio.sleep(0.02)
                if events:
                    break
            if expect_ok:
                assert events[0][0] == "EV_CONNECTED"
                gobj_send_event(cli, "EV_TX_DATA", {"data": b"ping"}, probe)
                for _ in range(100):
                    await asyncio.sleep(0.02)
                    if ("EV_RX_DATA", b"ping") in events:
                        break
                assert ("EV_RX_DATA", b"ping") in events
            else:
                await asyncio.sleep(0.3)
                assert all(e != "EV_CONNECTED" for e, _ in events)
                assert cli.state == "ST_DISCONNECTED"
        gobj_end()  # close the sockets while the loop still runs
        await asyncio.sleep(0.05)

    try:
        asyncio.run(main())
    finally:
        kernel.loop = None
        gclass_unregister(name)
