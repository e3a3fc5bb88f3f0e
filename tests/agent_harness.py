"""An agent as a real process on loopback, for tests and benches.

``Agent`` starts ``python -m yunos.agent`` in a work dir of its own with a
config file that binds the control plane to ``ws://127.0.0.1:0``: the kernel
picks a free port and the agent reports it in its ``tcp_s.listening`` record,
which ``start`` reads back from the agent's log. Echo yunos get configs of
their own (``echo_config``) whose TLS listener also binds port 0; the real port
is read with ``view-attrs`` (``Agent.echo_port``). Nothing here uses the fixed
ports 1991 or 7443, and nothing leaves 127.0.0.1.

Two clients talk to the agent:

* ``Agent.ycommand``: the real CLI, as a user runs it (a subprocess, bounded).
* ``WSClient``: a small WebSocket client on the standard library, written from
  RFC 6455 for these tests. It can speak the control protocol (identity card,
  commands, answers, in the shape of ``reference/yuneta-wire.md``) and also
  send what a well-behaved client never would (bad JSON, oversized headers).

Every process is bounded in time and killed by pid at teardown: the agent, and
every yuno whose command line names this agent's work dir (yunos run in a
session of their own, so killing the agent's group would not reach them).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gobj.ytls.material import serial_hex
import pytest

__all__ = ["Agent", "EchoSession", "WSClient", "agent_factory", "decode_answers",
           "echo_config", "make_agents", "wait_for", "REPO", "PYTHON"]

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3

# A cold agent (imports, TLS context, first yuno) is up in about a second on
# an idle box; the margin covers two test processes sharing two cores.
START_TIMEOUT = 20.0
YCOMMAND_TIMEOUT = 30.0


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 0.1) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def decode_answers(text: str) -> list[dict[str, Any]]:
    """The answers ``ycommand --json`` printed, one JSON document each."""
    dec = json.JSONDecoder()
    out, i = [], 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            return out
        obj, i = dec.raw_decode(text, i)
        out.append(obj)


def echo_config(path: Path, name: str, *, crypto: dict[str, Any] | None = None,
                extra: dict[str, Any] | None = None) -> Path:
    """Write an echo yuno config: its TLS and DTLS listeners on port 0 of
    127.0.0.1, ``crypto`` (when given) as the certificate files of both."""
    config: dict[str, Any] = {
        "__json_config_variables__": {"__echo_url__": "tcps://127.0.0.1:0",
                                      "__echo_dtls_url__": "udps://127.0.0.1:0"},
        "yuno": {"yuno_role": "echo", "yuno_name": name},
    }
    if crypto is not None:
        config["global"] = {"echo_tls.crypto": crypto, "echo_dtls.crypto": crypto}
    if extra:
        config.update(extra)
    path.write_text(json.dumps(config, indent=2))
    return path


# ---------------------------------------------------------------------------
# WebSocket client (stdlib)
# ---------------------------------------------------------------------------
class WSClient:
    """One client connection to the agent's control plane."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> WSClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- RFC 6455 ----------------------------------------------------------
    def handshake(self) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        request = (f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                   "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                   f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
        self.sock.sendall(request.encode())
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed during the opening handshake")
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        assert lines[0].startswith("HTTP/1.1 101"), lines[0]
        headers = {k.strip().lower(): v.strip() for k, v in
                   (line.split(":", 1) for line in lines[1:] if ":" in line)}
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        assert headers.get("sec-websocket-accept") == accept, headers

    def send_frame(self, payload: bytes, opcode: int = 0x1, *,
                   announce: int | None = None) -> None:
        """One masked FIN frame. ``announce`` puts another length in the header
        (to announce more than is sent)."""
        length = len(payload) if announce is None else announce
        head = bytes([0x80 | opcode])
        if length < 126:
            head += bytes([0x80 | length])
        elif length < 1 << 16:
            head += bytes([0x80 | 126]) + struct.pack("!H", length)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", length)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed by the agent")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv_frame(self) -> tuple[int, bytes]:
        b0, b1 = self._read(2)
        length = b1 & 0x7F
        if length == 126:
            length = struct.unpack("!H", self._read(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", self._read(8))[0]
        mask = self._read(4) if b1 & 0x80 else b""
        data = self._read(length)
        if mask:
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        return b0 & 0x0F, data

    def closed_by_peer(self, timeout: float = 5.0) -> tuple[bool, int | None]:
        """Read until the agent ends the connection. Returns (closed, close code)."""
        self.sock.settimeout(timeout)
        code = None
        try:
            while True:
                opcode, data = self.recv_frame()
                if opcode == 0x8 and len(data) >= 2:
                    code = struct.unpack("!H", data[:2])[0]
        except ConnectionError:
            return True, code
        except OSError:  # a timeout, or a reset after the close frame
            return code is not None, code

    # -- inter-events --------------------------------------------------------
    def send_event(self, event: str, kw: dict[str, Any], binary: bool = False) -> None:
        msg = {"event": event, "kw": kw}
        if binary:
            import msgpack

            self.send_frame(msgpack.packb(msg, use_bin_type=True), 0x2)
        else:
            self.send_frame(json.dumps(msg, separators=(",", ":")).encode(), 0x1)

    def recv_event(self) -> dict[str, Any]:
        while True:
            opcode, data = self.recv_frame()
            if opcode == 0x1:
                return json.loads(data.decode())
            if opcode == 0x2:
                import msgpack

                return msgpack.unpackb(data, raw=False)
            if opcode == 0x8:
                raise ConnectionError("close frame from the agent")

    def login(self, token: str, role: str = "ycommand") -> dict[str, Any]:
        """Upgrade, present an identity card (Yuneta's shape), return the ack's kw."""
        self.handshake()
        self.send_event("EV_IDENTITY_CARD", {
            "yuno_role": role, "yuno_id": "", "yuno_name": "", "yuno_tag": "",
            "yuno_version": "", "yuno_release": "", "yuneta_version": "",
            "playing": False, "pid": os.getpid(), "watcher_pid": 0, "jwt": token,
            "username": "tester", "launch_id": 0, "yuno_startdate": "", "id": "",
            "required_services": [],
            "__md_iev__": {"ievent_gate_stack": [self._hop(f"ws://127.0.0.1:{self.port}")],
                           "__msg_type__": "__identity__"}})
        ack = self.recv_event()
        assert ack["event"] == "EV_IDENTITY_CARD_ACK", ack
        return ack["kw"]

    @staticmethod
    def _hop(src_service: str) -> dict[str, str]:
        return {"dst_yuno": "", "dst_role": "yuneta_agent",
                "dst_service": "__default_service__", "src_yuno": "", "src_role": "ycommand",
                "src_service": src_service, "user": "tester", "host": "localhost"}

    def send_command(self, line: str, binary: bool = False, **kw: Any) -> None:
        self.send_event("EV_MT_COMMAND", {
            **kw, "__command__": line,
            "__md_iev__": {"command_stack": [{"command": line, "kw": {}}],
                           "ievent_gate_stack": [self._hop("ycommand")],
                           "__msg_type__": "__command__"}}, binary)

    def answers(self) -> list[dict[str, Any]]:
        """Every answer to the last command: one, or one per yuno of a relay."""
        out = [self.recv_event()["kw"]]
        total = int((out[0].get("__relay__") or {}).get("total") or 1)
        while len(out) < total:
            out.append(self.recv_event()["kw"])
        return out

    def call(self, line: str, **kw: Any) -> list[dict[str, Any]]:
        self.send_command(line, **kw)
        return self.answers()


# ---------------------------------------------------------------------------
# The agent process
# ---------------------------------------------------------------------------
class Agent:
    """``python -m yunos.agent -f <config>`` under ``work`` (YUNETA_WORK_DIR)."""

    def __init__(self, work: Path, agent_kw: dict[str, Any] | None = None,
                 yunos: list[dict[str, Any]] | None = None) -> None:
        self.work = work
        self.work.mkdir(parents=True, exist_ok=True)
        self.config = work / "agent-test.json"
        kw: dict[str, Any] = {
            "cert_sync_store_dir": str(work / "store" / "certs"),
            # A store of our own; the default letsencrypt dir would be /etc.
            "cert_sync_copy_cmd": f"{REPO / 'tools' / 'copy-certs.sh'} --letsencrypt-dir "
                                  f"{work / 'letsencrypt'} --store {work / 'store' / 'certs'}",
            "deploy_hook_last_run_file": str(work / "last-deploy-hook-run"),
        }
        kw.update(agent_kw or {})
        self.config.write_text(json.dumps({
            "__json_config_variables__": {"__agent_url__": "ws://127.0.0.1:0",
                                          "__store__": str(work / "store" / "certs"),
                                          "__agent_yunos__": yunos or []},
            "services": [{"name": "agent", "kw": kw}],
        }, indent=2))
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.starts = 0
        self.log = work / "agent-0.log"

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def token(self) -> str:
        return (self.work / "realms" / "agent" / "data" / "agent.token").read_text().strip()

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("YUNETA_")}
        env["YUNETA_WORK_DIR"] = str(self.work)
        return env

    # -- lifecycle -----------------------------------------------------------
    def start(self, wait_yunos: int | None = 1) -> Agent:
        """Start the agent, learn its port; with ``wait_yunos``, also wait
        until that many yunos are running (connected to the agent)."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        self.log = self.work / f"agent-{self.starts}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [PYTHON, "-m", "yunos.agent", "-f", str(self.config)], cwd=str(REPO),
                env=self.env(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        self.port = wait_for("the agent's listening record", self._listening, START_TIMEOUT)
        if wait_yunos:
            self.wait_running(wait_yunos)
        return self

    def _listening(self) -> int:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"agent exited with {self.proc.returncode}:\n{self.log_text()}")
        for r in self.records():
            if r.get("msgid") == "tcp_s.listening" and r.get("gobj", "").endswith(
                    "agent_server_port"):
                return int(r["port"])
        return 0

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Signal the agent and wait for it; return its exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
            raise AssertionError(f"agent did not exit within {timeout} s of signal {sig}")

    def yuno_pids(self) -> list[int]:
        """Live processes launched from this work dir (its yunos), found in /proc."""
        marker = str(self.work / "realms" / "agent" / "data" / "yunos").encode()
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if marker in cmdline and stat.rsplit(")", 1)[1].split()[0] != "Z":
                pids.append(int(entry))
        return pids

    def cleanup(self) -> list[int]:
        """Kill, by pid, whatever of ours is still alive. Returns the yuno pids killed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        left = self.yuno_pids()
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return left

    # -- logs ----------------------------------------------------------------
    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    def msgids(self) -> list[str]:
        return [r.get("msgid", "") for r in self.records()]

    # -- clients -------------------------------------------------------------
    def ycommand(self, line: str, *args: str, jwt: str | None = None,
                 timeout: float = YCOMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """Run the real ycommand CLI against this agent."""
        argv = [PYTHON, "-m", "yunos.ycommand", "-u", self.url, "-c", line, *args]
        if jwt is not None:
            argv += ["-j", jwt]
        return subprocess.run(argv, cwd=str(REPO), env=self.env(), capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def ycommand_json(self, line: str, *args: str) -> tuple[int, list[dict[str, Any]]]:
        proc = self.ycommand(line, "--json", *args)
        return proc.returncode, decode_answers(proc.stdout)

    def client(self) -> WSClient:
        c = WSClient(self.port)
        ack = c.login(self.token)
        assert ack["result"] == 0, ack
        return c

    def call(self, line: str, **kw: Any) -> list[dict[str, Any]]:
        """One command over a fresh in-process client (cheap, for polling)."""
        with self.client() as c:
            return c.call(line, **kw)

    def list_yunos(self) -> list[dict[str, Any]]:
        [answer] = self.call("list-yunos")
        return list(answer["data"])

    def running(self, name: str | None = None) -> list[dict[str, Any]]:
        return [y for y in self.list_yunos() if y["running"] and y["pid"]
                and (name is None or y["yuno_name"] == name)]

    def wait_running(self, count: int, timeout: float = START_TIMEOUT) -> list[dict[str, Any]]:
        return wait_for(f"{count} running yuno(s)",
                        lambda: (lambda r: r if len(r) >= count else None)(self.running()),
                        timeout)

    def echo_port(self, name: str) -> int:
        """The real port of echo yuno ``name``'s TLS listener."""
        [answer] = self.call(f"command-yuno command=view-attrs gobj=echo_tls yuno_name={name}")
        assert answer["result"] == 0, answer
        return int(answer["data"]["lPort"])


# ---------------------------------------------------------------------------
# A TLS session to an echo listener
# ---------------------------------------------------------------------------
class EchoSession:
    """One TLS connection to an echo yuno's listener on 127.0.0.1.

    With ``cafile`` the server certificate is verified against it (and
    ``server_name``); without, verification is off and the test relies on the
    recorded ``serial`` instead.
    """

    def __init__(self, port: int, cafile: str | os.PathLike[str] | None = None,
                 server_name: str | None = None, timeout: float = 10.0) -> None:
        if cafile is not None:
            ctx = ssl.create_default_context(cafile=str(cafile))
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        try:
            self.sock = ctx.wrap_socket(raw, server_hostname=server_name or "localhost")
        except BaseException:
            raw.close()
            raise
        from cryptography import x509

        der = self.sock.getpeercert(binary_form=True)
        assert der is not None
        self.serial = serial_hex(x509.load_der_x509_certificate(der).serial_number)

    def echo(self, data: bytes) -> bytes:
        """Send ``data``; return what came back (as many bytes as were sent)."""
        self.sock.sendall(data)
        got = b""
        while len(got) < len(data):
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            got += chunk
        return got

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


@contextlib.contextmanager
def make_agents(base: Path) -> Iterator[Callable[..., Agent]]:
    """Make agents under ``base``; each is stopped and its yunos killed at the end."""
    made: list[Agent] = []

    def make(name: str = "agent", **kw: Any) -> Agent:
        agent = Agent(base / name, **kw)
        made.append(agent)
        return agent

    try:
        yield make
    finally:
        for agent in made:
            agent.cleanup()


@pytest.fixture
def agent_factory(tmp_path: Path) -> Iterator[Callable[..., Agent]]:
    with make_agents(tmp_path) as make:
        yield make
