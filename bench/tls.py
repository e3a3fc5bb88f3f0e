"""TLS benchmark: our C_TCP_S echo yuno against bare asyncio and uvloop servers.

``.venv/bin/python -m bench.tls [--quick] [--profile]``

Every server runs in its own child process on 127.0.0.1 with the same ECDSA
P-256 certificate; this process is the client. Client and servers share the
machine's cores and its speed drifts, so what is compared is each *server's
own* CPU time per operation, read from /proc/<pid>/stat before and after, with
the variants measured back to back and interleaved round by round; the median
over the rounds is reported. Measured:

(a) reload time of our listener with 0, 1,000 and 5,000 live TLS sessions
    (``duration_ms`` of the yuno's ``tls.reload.done`` record), and how many of
    those sessions fail to echo afterwards;
(b) server CPU per full TLS handshake (the client never resumes a session);
(c) server CPU per 100-byte echo round trip over 16 sessions;
(d) server memory per idle TLS session (RSS delta over 1,000 sessions).

Variants: ``ours`` (the echo yuno on its default loop, uvloop),
``ours-asyncio`` (the same on the stdlib loop), ``asyncio`` and ``uvloop``
(``asyncio.start_server(handler, ssl=ctx)``); ``openssl s_server``, when the
``openssl`` tool is installed, is a reference for (b) only (handshakes without
the echo, since it does not echo). It prints figures and ratios and asserts
nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import signal
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._util import proc_cpu, proc_rss, raise_nofile
from gobj.ytls.devcerts import ensure_dev_certs, issue_server_cert

MAIN = Path(__file__).resolve().parent.parent
PY = sys.executable
VARIANTS = ("ours", "ours-asyncio", "asyncio", "uvloop")
_LINGER_RESET = struct.pack("ii", 1, 0)


# Server processes

class Server:
    """A server child process, its port, and the JSON records it prints."""

    def __init__(self, name: str, argv: list[str], workdir: Path) -> None:
        self.name = name
        self.records: queue.Queue[dict[str, Any]] = queue.Queue()
        self._stderr = open(workdir / f"{name}.stderr", "w")
        env = dict(os.environ, YUNETA_WORK_DIR=str(workdir / "var"))
        self.proc = subprocess.Popen(argv, cwd=MAIN, env=env, stdout=subprocess.PIPE,
                                     stderr=self._stderr, text=True)
        threading.Thread(target=self._read, daemon=True).start()
        first = self.wait_for(lambda r: r.get("msgid") == "bench.port" or (
            r.get("msgid") == "tcp_s.listening" and "echo_tls" in r.get("gobj", "")), 30)
        self.port = int(first["port"])

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.records.put(json.loads(line))
            except json.JSONDecodeError:
                continue

    def wait_for(self, match: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{self.name}: no matching record in {timeout} s")
            try:
                record = self.records.get(timeout=left)
            except queue.Empty:
                continue
            if match(record):
                return record

    def cpu(self) -> float:
        return proc_cpu(self.pid)

    def rss(self) -> int:
        return proc_rss(self.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()


class OpenSSLServer:
    """``openssl s_server``: the handshake reference (C, one connection at a time)."""

    name = "openssl s_server"

    def __init__(self, certs: Path) -> None:
        probe = socket.create_server(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.proc = subprocess.Popen(
            ["openssl", "s_server", "-accept", f"127.0.0.1:{self.port}", "-quiet",
             "-cert", str(certs / "server.crt"), "-key", str(certs / "private" / "server.key")],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu(self) -> float:
        return proc_cpu(self.pid)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def start_servers(workdir: Path, certs: Path, profile: bool) -> dict[str, Server]:
    cert, key = certs / "server.crt", certs / "private" / "server.key"
    config = {
        "__json_config_variables__": {"__echo_url__": "tcps://127.0.0.1:0",
                                      "__echo_dtls_url__": "udp://127.0.0.1:0"},
        "environment": {"work_dir": str(workdir / "var"), "domain_dir": "realms/bench"},
        "yuno": {"yuno_name": "bench", "timeout_cert_check": 0},
        "global": {"echo_tls.crypto": {"library": "openssl", "ssl_certificate": str(cert),
                                       "ssl_certificate_key": str(key)}},
    }
    cfg = workdir / "echo-bench.json"
    cfg.write_text(json.dumps(config))
    ours = [PY, "-m", "bench._util", "ours"]
    if profile:
        ours += ["--profile", str(workdir / "ours.prof")]
    argvs = {
        "ours": [*ours, "--", "-f", str(cfg)],
        "ours-asyncio": [PY, "-m", "bench._util", "ours", "--", "-f", str(cfg), "--no-uvloop"],
        "asyncio": [PY, "-m", "bench._util", "bare", "asyncio", str(cert), str(key)],
        "uvloop": [PY, "-m", "bench._util", "bare", "uvloop", str(cert), str(key)],
    }
    return {name: Server(name, argv, workdir) for name, argv in argvs.items()}


# Client side: blocking sockets in threads (cheap per session, no loop buffers)

def client_context(ca: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    # Full handshakes only: no tickets asked for, and no session is ever reused.
    ctx.options |= ssl.OP_NO_TICKET
    return ctx


def open_session(port: int, ctx: ssl.SSLContext, with_echo: bool = True) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    # Close with a reset: thousands of client-side TIME_WAITs would otherwise
    # run out of ephemeral ports over a long run.
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    tls = ctx.wrap_socket(raw, server_hostname="localhost")
    if with_echo:
        echo(tls, b"x")
    return tls


def echo(tls: ssl.SSLSocket, msg: bytes) -> None:
    tls.sendall(msg)
    got = b""
    while len(got) < len(msg):
        chunk = tls.recv(len(msg) - len(got))
        if not chunk:
            raise ConnectionError("server closed the session")
        got += chunk
    if got != msg:
        raise ConnectionError("echo mismatch")


def in_threads(n_threads: int, work: Callable[[int], int]) -> int:
    """Run work(i) in n threads; return the sum of what they return."""
    results = [0] * n_threads

    def run(i: int) -> None:
        results[i] = work(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(results)


def handshakes(port: int, ctx: ssl.SSLContext, n: int, conc: int = 32,
               with_echo: bool = True) -> int:
    """n full handshakes (each with one echo) from conc threads; returns failures."""
    share = [n // conc + (1 if i < n % conc else 0) for i in range(conc)]

    def work(i: int) -> int:
        failed = 0
        for _ in range(share[i]):
            try:
                open_session(port, ctx, with_echo).close()
            except (OSError, ssl.SSLError):
                failed += 1
        return failed

    return in_threads(conc, work)


def open_sessions(port: int, ctx: ssl.SSLContext, n: int, conc: int = 16) -> list[ssl.SSLSocket]:
    out: list[ssl.SSLSocket] = []
    lock = threading.Lock()
    share = [n // conc + (1 if i < n % conc else 0) for i in range(conc)]

    def work(i: int) -> int:
        mine = [open_session(port, ctx) for _ in range(share[i])]
        with lock:
            out.extend(mine)
        return 0

    in_threads(conc, work)
    return out


def dropped(sessions: list[ssl.SSLSocket], conc: int = 16) -> int:
    """How many sessions fail one echo."""
    def work(i: int) -> int:
        bad = 0
        for tls in sessions[i::conc]:
            try:
                echo(tls, b"still there?")
            except (OSError, ssl.SSLError):
                bad += 1
        return bad

    return in_threads(conc, work)


def close_all(sessions: list[ssl.SSLSocket]) -> None:
    for tls in sessions:
        tls.close()
    sessions.clear()


# Measurements

def cpu_per_handshake(server: Server | OpenSSLServer, ctx: ssl.SSLContext, n: int) -> float:
    c0 = server.cpu()
    failed = handshakes(server.port, ctx, n, with_echo=isinstance(server, Server))
    spent = server.cpu() - c0
    if failed:
        print(f"  ! {server.name}: {failed} of {n} handshakes failed")
    return spent / max(n - failed, 1)


def cpu_per_round_trip(server: Server, ctx: ssl.SSLContext, rounds: int) -> float:
    sessions = open_sessions(server.port, ctx, 16, conc=16)
    msg = b"m" * 100
    try:
        c0 = server.cpu()

        def work(i: int) -> int:
            tls = sessions[i]
            for _ in range(rounds):
                echo(tls, msg)
            return rounds

        done = in_threads(len(sessions), work)
        return (server.cpu() - c0) / done
    finally:
        close_all(sessions)


def memory_per_session(server: Server, ctx: ssl.SSLContext, n: int) -> float:
    time.sleep(0.3)
    before = server.rss()
    sessions = open_sessions(server.port, ctx, n)
    time.sleep(0.5)
    after = server.rss()
    lost = dropped(sessions)
    close_all(sessions)
    if lost:
        print(f"  ! {server.name}: {lost} idle sessions did not echo")
    return (after - before) / n


def reload_times(server: Server, certs: Path, counts: list[int], reloads: int,
                 ctx: ssl.SSLContext) -> list[dict[str, Any]]:
    """Reload ``reloads`` times at each live-session count (cumulative), then at 0 again."""
    live: list[ssl.SSLSocket] = []
    flip = [0]
    rows = []

    def one_reload() -> dict[str, Any]:
        name = "a" if flip[0] % 2 == 0 else "b"
        flip[0] += 1
        # Key first, then the certificate, each by rename: the deploy hook's order.
        shutil.copy(certs / "private" / f"{name}.key", certs / "private" / "server.key.new")
        os.replace(certs / "private" / "server.key.new", certs / "private" / "server.key")
        shutil.copy(certs / f"{name}.crt", certs / "server.crt.new")
        os.replace(certs / "server.crt.new", certs / "server.crt")
        os.kill(server.pid, signal.SIGUSR1)
        return server.wait_for(lambda r: r.get("msgid", "").startswith("tls.reload."), 30)

    for count in [*counts, 0]:
        if count == 0:
            close_all(live)
            time.sleep(0.5)
        elif count > len(live):
            live.extend(open_sessions(server.port, ctx, count - len(live)))
        durations = []
        for _ in range(reloads):
            record = one_reload()
            if record["msgid"] != "tls.reload.done":
                raise RuntimeError(f"reload refused: {record}")
            durations.append(float(record["duration_ms"]))
        rows.append({"sessions": count, "live_logged": record.get("live_sessions"),
                     "median_ms": statistics.median(durations), "max_ms": max(durations),
                     "dropped": dropped(live) if live else 0})
    close_all(live)
    return rows


# Output

def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def report(results: dict[str, dict[str, float]], reload_rows: list[dict[str, Any]],
           args: argparse.Namespace) -> None:
    print()
    print("(a) reload of our listener (duration_ms logged by tls.reload.done; "
          f"{args.reloads} reloads per row)")
    rows = [["live sessions", "median ms", "max ms", "sessions dropped"]]
    for r in reload_rows:
        rows.append([str(r["sessions"]), f"{r['median_ms']:.2f}", f"{r['max_ms']:.2f}",
                     f"{r['dropped']}/{r['sessions']}"])
    print(_table(rows))
    base = reload_rows[0]["median_ms"]
    top = max(reload_rows[:-1], key=lambda r: r["sessions"])
    print(f"reload with {top['sessions']} sessions / with 0: "
          f"{top['median_ms'] / base:.2f}x (aim <= 1.5x); "
          f"0 after / 0 before: {reload_rows[-1]['median_ms'] / base:.2f}x")

    print()
    print(f"server CPU per operation (median of {args.rounds} interleaved rounds) and memory")
    rows = [["server", "handshake us", "round trip us", "idle session KiB"]]
    for v in VARIANTS:
        res = results[v]
        rows.append([v, f"{res['hs'] * 1e6:.0f}", f"{res['rt'] * 1e6:.1f}",
                     f"{res['mem'] / 1024:.1f}"])
    print(_table(rows))
    print()
    rows = [["ratio", "handshake", "round trip", "idle session"]]
    for a, b in (("ours", "asyncio"), ("ours", "uvloop"), ("ours-asyncio", "asyncio")):
        rows.append([f"{a}/{b}", *(f"{results[a][k] / results[b][k]:.2f}x"
                                   for k in ("hs", "rt", "mem"))])
    print(_table(rows))
    print("aims: handshake and round trip <= 1.00x of bare asyncio; idle session <= 32 KiB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.tls", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (about a minute)")
    parser.add_argument("--profile", action="store_true",
                        help="run our yuno under cProfile and print where its time goes")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.hs, args.rt, args.idle, args.reloads = 2, 300, 300, 300, 5
        counts = [1, 500]
    else:
        args.rounds, args.hs, args.rt, args.idle, args.reloads = 5, 1500, 1500, 1000, 10
        counts = [1000, 5000]
    raise_nofile()

    workdir = Path(tempfile.mkdtemp(prefix="bench-tls-"))
    certs = workdir / "certs"
    ensure_dev_certs(str(certs))
    for name in ("a", "b"):
        issue_server_cert(str(certs), name)
    ctx = client_context(certs / "ca.crt")
    servers = start_servers(workdir, certs, args.profile)
    reference = OpenSSLServer(certs) if shutil.which("openssl") else None
    t0 = time.monotonic()
    try:
        print("servers: " + ", ".join(f"{s.name} pid {s.pid} port {s.port}"
                                       for s in servers.values()))
        for s in servers.values():  # warm up: imports, caches, first allocations
            handshakes(s.port, ctx, 64)

        # Memory first: once a server has held thousands of sessions its heap
        # has room to spare and an RSS delta would read as zero.
        print(f"(d) memory over {args.idle} idle sessions ...")
        memory = {v: memory_per_session(servers[v], ctx, args.idle) for v in VARIANTS}

        print(f"(a) reloads with {', '.join(map(str, [0, *counts]))} live sessions ...")
        reload_rows = reload_times(servers["ours"], certs, [0, *counts], args.reloads, ctx)

        samples: dict[str, dict[str, list[float]]] = {v: {"hs": [], "rt": []} for v in VARIANTS}
        ref_hs: list[float] = []
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}: handshakes, round trips ...")
            for v in VARIANTS:
                samples[v]["hs"].append(cpu_per_handshake(servers[v], ctx, args.hs))
            if reference is not None:
                ref_hs.append(cpu_per_handshake(reference, ctx, args.hs))
            for v in VARIANTS:
                samples[v]["rt"].append(cpu_per_round_trip(servers[v], ctx, args.rt))
        results = {v: {"hs": statistics.median(samples[v]["hs"]),
                       "rt": statistics.median(samples[v]["rt"]),
                       "mem": memory[v]} for v in VARIANTS}
        report(results, reload_rows, args)
        if ref_hs:
            ref = statistics.median(ref_hs)
            print(f"reference: openssl s_server {ref * 1e6:.0f} us per handshake (no echo, "
                  f"one connection at a time); ours/s_server "
                  f"{results['ours']['hs'] / ref:.2f}x, asyncio/s_server "
                  f"{results['asyncio']['hs'] / ref:.2f}x")
        print(f"\nbench took {time.monotonic() - t0:.0f} s; "
              f"rounds: {args.rounds}, handshakes/round: {args.hs}, "
              f"round trips/session/round: {args.rt} x 16, idle sessions: {args.idle}")
    finally:
        for s in servers.values():
            s.stop()
        if reference is not None:
            reference.stop()
        if args.profile:
            _print_profile(workdir / "ours.prof")
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _print_profile(path: Path) -> None:
    import pstats

    if not path.exists():
        print("no profile written")
        return
    print("\nours: where the server's time went (cProfile, top 25 by own time)")
    pstats.Stats(str(path)).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    sys.exit(main())
