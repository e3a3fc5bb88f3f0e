"""Reload under load: 200 certificate swaps while clients handshake without pause.

Eight client threads, each with a blocking stdlib ``ssl`` socket, connect,
handshake, echo one message and close, over and over, while the yuno's loop
replaces the certificate files and runs ``reload-certs`` 200 times, cycling
through A, B and C. A swap is one reference assignment, so every handshake
must complete and present exactly one of the three certificates, whole; none
may fail, and the server must log no failed session.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from gobj.log import capture_logs

from tests.test_c_tcp_s import Certs, command, port_of, run, settle, start_yuno, stat, \
    tls_listener

CLIENTS = 8
RELOADS = 200


class _Hammer:
    """Client threads that handshake in a loop until told to stop."""

    def __init__(self, port: int, ctx: ssl.SSLContext, known: dict[bytes, str]) -> None:
        self.port, self.ctx, self.known = port, ctx, known
        self.stop = threading.Event()
        self.seen: Counter[str] = Counter()
        self.failures: list[str] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(CLIENTS)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)
            assert not t.is_alive(), "a client thread hung"

    def _run(self, n: int) -> None:
        msg = f"client {n}".encode()
        while not self.stop.is_set():
            try:
                name = self._one(msg)
            except (OSError, ssl.SSLError, AssertionError) as exc:
                with self.lock:
                    self.failures.append(repr(exc))
                continue
            with self.lock:
                self.seen[name] += 1

    def _one(self, msg: bytes) -> str:
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as raw:
            with self.ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                der = tls.getpeercert(binary_form=True)
                tls.sendall(msg)
                got = b""
                while len(got) < len(msg):
                    chunk = tls.recv(len(msg) - len(got))
                    assert chunk, "server closed mid-echo"
                    got += chunk
                assert got == msg, got
        name = self.known.get(der)
        assert name is not None, "a certificate that is none of A, B, C"
        return name


@pytest.mark.parametrize("library", ["openssl", "mbedtls"])
def test_200_reloads_while_clients_handshake(tmp_path: Path, library: str) -> None:
    certs = Certs(tmp_path)
    cycle = [("b", certs.b), ("c", certs.c), ("a", certs.a)]
    known = {f.leaf.public_bytes(Encoding.DER): name
             for name, f in (("a", certs.a), ("b", certs.b), ("c", certs.c))}
    pairs = [(name, f.fullchain.read_bytes(), f.key.read_bytes()) for name, f in cycle]

    async def body() -> dict[str, Any]:
        with capture_logs("info") as records:
            start_yuno({"echo_tls": tls_listener(certs, library)})
            hammer = _Hammer(port_of("echo_tls"), certs.client_ctx(), known)
            hammer.start()
            t0 = time.monotonic()
            try:
                await settle(lambda: sum(hammer.seen.values()) >= CLIENTS, 10)
                for i in range(RELOADS):
                    _, chain, key = pairs[i % 3]
                    certs.install(chain=chain, key=key)
                    answer = command("echo_tls", "reload-certs")
                    assert answer["result"] == 0 and answer["data"]["changed"], answer
                    # Give the clients a few handshakes between two swaps.
                    await asyncio.sleep(0.02)
            finally:
                await asyncio.get_running_loop().run_in_executor(None, hammer.join)
            elapsed = time.monotonic() - t0
            await settle(lambda: stat("echo_tls", "connxs") == 0, 10)
        return {"seen": hammer.seen, "failures": hammer.failures, "elapsed": elapsed,
                "records": records, "reloads": stat("echo_tls", "reloads")}

    got = run(body)
    assert got["failures"] == [], got["failures"][:5]
    assert got["reloads"] == RELOADS
    seen = got["seen"]
    assert set(seen) == {"a", "b", "c"}, seen
    assert sum(seen.values()) >= 4 * RELOADS, seen
    failed = [r for r in got["records"]
              if r["msgid"] in ("tcp.tls.session_failed", "tls.reload.failed")
              or r["level"] in ("error", "critical")]
    assert failed == [], failed[:3]
    assert got["elapsed"] < 60
    print(f"{library}: {sum(seen.values())} handshakes in {got['elapsed']:.1f} s "
          f"across {RELOADS} reloads: {dict(seen)}")
