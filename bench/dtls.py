"""DTLS benchmark for C_UDP_S (``python -m bench.dtls [--quick]``).

Three echo yunos run as child processes (``python -m yunos.echo -f CONFIG``),
each with its C_UDP_S on a free loopback port and its C_TCP_S on port 0: one
plain ``udp://`` (the baseline), one ``udps://`` on OpenSSL and one on mbed
TLS, the library set through the global ``echo_dtls.crypto``. This process is
the client, with blocking sockets and a ``YDTLS`` client of the server's
library, one operation at a time. Measured:

* new peers per second: a DTLS handshake (cookie exchange included) then a
  close_notify; for plain UDP the analogue is one round trip from a new socket;
* round trips per second: one 64-byte datagram echoed on an established peer;
* the server's CPU per operation: utime + stime of the child from
  ``/proc/<pid>/stat`` (clock ticks) read before and after each batch;
* memory per peer: the child's resident memory before and after that many
  established, idle peers, divided by their number.

Batches of every variant are interleaved, round after round, so that drift in
the machine's speed hits them alike; totals are summed over the rounds. Prints
a table with ratios against plain UDP; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gobj.ytls.devcerts import ensure_dev_certs
from gobj.ytls.dtls import DTLSSession, YDTLS

VARIANTS = ("plain", "openssl", "mbedtls")
LOOPBACK = "127.0.0.1"
PAYLOAD = b"x" * 64
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Sizes:
    rounds: int
    new_peers: dict[str, int]       # per batch
    round_trips: dict[str, int]     # per batch
    idle_peers: int


# Cheaper variants get more operations per batch, so that each batch costs the
# server enough clock ticks (10 ms each) to be read with some precision.
FULL = Sizes(rounds=3, new_peers={"plain": 2000, "openssl": 300, "mbedtls": 100},
             round_trips={"plain": 20000, "openssl": 3000, "mbedtls": 3000}, idle_peers=500)
QUICK = Sizes(rounds=2, new_peers={"plain": 400, "openssl": 40, "mbedtls": 20},
              round_trips={"plain": 3000, "openssl": 500, "mbedtls": 500}, idle_peers=100)


@dataclass
class Totals:
    ops: int = 0
    wall: float = 0.0
    ticks: int = 0

    def add(self, ops: int, wall: float, ticks: int) -> None:
        self.ops += ops
        self.wall += wall
        self.ticks += ticks

    @property
    def rate(self) -> float:
        return self.ops / self.wall if self.wall else 0.0

    @property
    def cpu_per_op(self) -> float:
        """Server CPU seconds per operation."""
        return self.ticks / CLK_TCK / self.ops if self.ops else 0.0


@dataclass
class Server:
    variant: str
    proc: subprocess.Popen[bytes]
    port: int
    loop_name: str = "?"
    new_peers: Totals = field(default_factory=Totals)
    round_trips: Totals = field(default_factory=Totals)
    bytes_per_peer: float = 0.0

    def cpu_ticks(self) -> int:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])      # utime, stime (stat fields 14, 15)

    def rss(self) -> int:
        with open(f"/proc/{self.proc.pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE


# Children

def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def _start(variant: str, work: Path, certs: Path) -> Server:
    port = _free_udp_port()
    scheme = "udp" if variant == "plain" else "udps"
    config = {
        "__json_config_variables__": {
            "__certs__": str(certs),
            "__echo_url__": "tcp://127.0.0.1:0",
            "__echo_dtls_url__": f"{scheme}://{LOOPBACK}:{port}",
        },
        "environment": {"work_dir": str(work), "domain_dir": f"realms/echo/{variant}"},
        "yuno": {"yuno_name": f"bench-{variant}"},
        "global": {"echo_dtls.crypto": {
            "library": "openssl" if variant == "plain" else variant,
            "ssl_certificate": str(certs / "server.crt"),
            "ssl_certificate_key": str(certs / "private" / "server.key")}},
    }
    cfg = work / f"{variant}.json"
    cfg.write_text(json.dumps(config))
    log = open(work / f"{variant}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "yunos.echo", "-f", str(cfg)],
                            stdout=log, stderr=subprocess.STDOUT,
                            cwd=Path(__file__).resolve().parent.parent)
    server = Server(variant, proc, port)
    _wait_listening(server, work / f"{variant}.log")
    return server


def _wait_listening(server: Server, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise SystemExit(f"echo yuno for {server.variant} exited; see {log}")
        for line in log.read_text(errors="replace").splitlines():
            if '"yuno.starting"' in line:
                server.loop_name = json.loads(line).get("loop", "?")
            if '"udp_s.listening"' in line:
                return
        time.sleep(0.05)
    raise SystemExit(f"echo yuno for {server.variant} not listening after 30 s; see {log}")


def _stop(server: Server) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(10)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()


# Client side: one blocking socket per peer

class Peer:
    """A client socket connected to the server, plain or with one DTLS session."""

    def __init__(self, server: Server, client: YDTLS | None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.connect((LOOPBACK, server.port))
        self.session: DTLSSession | None = None
        if client is not None:
            self.session = client.new_session((LOOPBACK, server.port))
            self._flush()

    def _flush(self) -> None:
        assert self.session is not None
        for datagram in self.session.outgoing():
            self.sock.send(datagram)

    def _pump(self, done: Any, timeout: float = 10.0) -> list[bytes]:
        """Read and drive timers until ``done(received)``."""
        assert self.session is not None
        received: list[bytes] = []
        deadline = time.monotonic() + timeout
        while not done(received):
            if time.monotonic() > deadline:
                raise SystemExit("a DTLS exchange did not finish in time")
            wait = self.session.next_timeout()
            ready, _, _ = select.select([self.sock], [], [], 1.0 if wait is None else wait)
            if ready:
                received += self.session.incoming(self.sock.recv(65536))
            else:
                self.session.handle_timeout()
            self._flush()
        return received

    def handshake(self) -> None:
        assert self.session is not None
        self._pump(lambda _: self.session.handshake_done)

    def echo(self) -> None:
        if self.session is None:
            self.sock.send(PAYLOAD)
            if self.sock.recv(65536) != PAYLOAD:
                raise SystemExit("plain echo returned something else")
            return
        self.session.send(PAYLOAD)
        self._flush()
        if self._pump(lambda got: bool(got)) != [PAYLOAD]:
            raise SystemExit("DTLS echo returned something else")

    def close(self) -> None:
        if self.session is not None:
            if self.session.handshake_done:
                self.session.close_notify()
                self._flush()
            self.session.free()
        self.sock.close()


def _client_for(server: Server, ca: Path) -> YDTLS | None:
    if server.variant == "plain":
        return None
    return YDTLS({"library": server.variant, "ssl_trusted_certificate": str(ca),
                  "ssl_server_name": "localhost"}, server=False)


# Measurements

def _new_peers(server: Server, client: YDTLS | None, n: int) -> None:
    ticks, start = server.cpu_ticks(), time.perf_counter()
    for _ in range(n):
        peer = Peer(server, client)
        if client is None:
            peer.echo()
        else:
            peer.handshake()
        peer.close()
    wall = time.perf_counter() - start
    server.new_peers.add(n, wall, server.cpu_ticks() - ticks)


def _round_trips(server: Server, client: YDTLS | None, n: int) -> None:
    peer = Peer(server, client)
    if client is not None:
        peer.handshake()
    peer.echo()                                     # warm: first datagram after the handshake
    ticks, start = server.cpu_ticks(), time.perf_counter()
    for _ in range(n):
        peer.echo()
    wall = time.perf_counter() - start
    server.round_trips.add(n, wall, server.cpu_ticks() - ticks)
    peer.close()


def _memory_per_peer(server: Server, client: YDTLS | None, n: int) -> None:
    time.sleep(0.3)                                 # let closed peers' close_notify land
    before = server.rss()
    peers = []
    for _ in range(n):
        peer = Peer(server, client)
        if client is None:
            peer.echo()                             # plain UDP: the server keeps nothing
        else:
            peer.handshake()
        peers.append(peer)
    time.sleep(0.3)
    server.bytes_per_peer = (server.rss() - before) / n
    for peer in peers:
        peer.close()


# Report

def _ratio(value: float, base: float) -> str:
    return f"{value / base:.3g}x" if base else "-"


def _report(servers: dict[str, Server], sizes: Sizes) -> None:
    plain = servers["plain"]
    loops = ", ".join(sorted({s.loop_name for s in servers.values()}))
    print(f"C_UDP_S in a child echo yuno ({loops} loop), client in this process; "
          f"{sizes.rounds} interleaved rounds; server CPU from /proc/<pid>/stat "
          f"({CLK_TCK} ticks/s)")
    print(f"new peer = DTLS handshake + close_notify (plain: first round trip from a new "
          f"socket); round trip = {len(PAYLOAD)}-byte echo on an established peer")
    print()
    head = (f"{'variant':8s} | {'new peers/s':>11s} {'rate/plain':>10s} {'srv ms/peer':>11s} "
            f"{'cpu/plain':>9s} | {'rtt/s':>8s} {'rate/plain':>10s} {'srv us/rt':>9s} "
            f"{'cpu/plain':>9s} | {'KiB/idle peer':>13s}")
    print(head)
    print("-" * len(head))
    for variant in VARIANTS:
        s = servers[variant]
        np_, rt = s.new_peers, s.round_trips
        print(f"{variant:8s} | {np_.rate:11.1f} {_ratio(np_.rate, plain.new_peers.rate):>10s} "
              f"{np_.cpu_per_op * 1e3:11.3f} "
              f"{_ratio(np_.cpu_per_op, plain.new_peers.cpu_per_op):>9s} | "
              f"{rt.rate:8.0f} {_ratio(rt.rate, plain.round_trips.rate):>10s} "
              f"{rt.cpu_per_op * 1e6:9.1f} "
              f"{_ratio(rt.cpu_per_op, plain.round_trips.cpu_per_op):>9s} | "
              f"{s.bytes_per_peer / 1024:13.1f}")
    print()
    print("ops: " + "; ".join(
        f"{v} {servers[v].new_peers.ops} new peers, {servers[v].round_trips.ops} round trips, "
        f"{servers[v].new_peers.ticks + servers[v].round_trips.ticks} server ticks"
        for v in VARIANTS))
    print(f"memory: {sizes.idle_peers} idle peers per variant (resident memory delta / peers)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a short run (fewer rounds and ops)")
    args = ap.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory(prefix="bench-dtls-") as tmp:
        work = Path(tmp)
        certs = work / "store" / "certs"
        ensure_dev_certs(str(certs))
        servers: dict[str, Server] = {}
        try:
            for variant in VARIANTS:
                servers[variant] = _start(variant, work, certs)
            clients = {v: _client_for(s, certs / "ca.crt") for v, s in servers.items()}
            for r in range(sizes.rounds):
                # Rotate the order each round so no variant always goes first.
                order = VARIANTS[r % 3:] + VARIANTS[:r % 3]
                for variant in order:
                    _new_peers(servers[variant], clients[variant], sizes.new_peers[variant])
                for variant in order:
                    _round_trips(servers[variant], clients[variant], sizes.round_trips[variant])
            for variant in VARIANTS:
                _memory_per_peer(servers[variant], clients[variant], sizes.idle_peers)
        finally:
            for server in servers.values():
                _stop(server)
        _report(servers, sizes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
