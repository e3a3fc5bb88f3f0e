"""Sans-I/O WebSocket endpoint (RFC 6455) for the control channels.

Why wsproto and not the ``websockets`` protocol layer: wsproto offers a
frame-only ``Connection`` (masking, fragmentation, UTF-8, close codes) that we
can start after an HTTP upgrade of our own, so our request is byte for byte
Yuneta's and its scheme-less Origin is simply accepted.  ``websockets``'
``ServerProtocol``/``ClientProtocol`` are sans-I/O too and bound message size,
but they write and check the upgrade themselves, so matching Yuneta's bytes
would mean working around them rather than on top of them.

wsproto has no size bound at all; ``_FrameGate`` below supplies it.

Theory of operation
-------------------
``WSEndpoint`` takes received bytes (``receive_data``) and returns events:
``Opened``, ``Text``, ``Binary``, ``Closed``, ``ProtocolError``.  Bytes the
endpoint must write on its own (the 101 answer, a Pong, a Close echo, a 1009
refusal) are queued; the caller drains them with ``data_to_send()`` after each
``receive_data``.  ``send_text``/``send_binary``/``close``/``initiate`` return
the bytes to write directly.  ``receive_data(b"")`` means the peer closed TCP.

Before wsproto sees a byte of a frame, ``_FrameGate`` reads the frame header
off the raw stream (RFC 6455 §5.2) and refuses, with Close 1009 (§7.4.1), a
frame or message announcing more than the bound, so an oversized payload is
never buffered.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import struct
from dataclasses import dataclass, field
from typing import Union

import h11
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    TextMessage,
)
from wsproto.utilities import generate_accept_token

# Close codes, RFC 6455 §7.4.1.
CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_ABNORMAL = 1006  # never sent: "no Close frame was received" (§7.1.5)
CLOSE_INVALID_DATA = 1007
CLOSE_TOO_BIG = 1009

DEFAULT_USER_AGENT = "yuneta-py-0.1.0"
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_REASONS = {400: "Bad Request", 426: "Upgrade Required", 431: "Request Header Fields Too Large"}


# --------------------------------------------------------------------------- events
@dataclass(frozen=True)
class Opened:
    """The opening handshake is done. Server: the request's target and headers;
    client: the resource asked for and the 101 response's headers.
    Header names are lower-cased; repeated fields are joined with ", "."""

    path: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Text:
    data: str


@dataclass(frozen=True)
class Binary:
    data: bytes


@dataclass(frozen=True)
class Closed:
    """The connection is over. ``clean`` is False for a bare TCP close
    (code 1006): Yuneta's ycommand ends that way, so it is not an error."""

    code: int
    reason: str = ""
    clean: bool = True


@dataclass(frozen=True)
class ProtocolError:
    """The peer broke the protocol; the endpoint is now closed.
    ``close_code`` is the Close code queued for the peer (None: a handshake
    failure, answered with an HTTP error on the server side)."""

    reason: str
    close_code: int | None


WSEvent = Union[Opened, Text, Binary, Closed, ProtocolError]


class WSStateError(RuntimeError):
    """A send was asked for in a state that does not allow it (a caller bug)."""


class MessageTooBig(ValueError):
    """An outgoing message is larger than ``max_message``: the peer would refuse it."""


class _HandshakeError(Exception):
    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.status = status


# --------------------------------------------------------------------------- frame gate
def _header_size(head: bytes | bytearray) -> int:
    """Bytes of a frame header given its first two (RFC 6455 §5.2)."""
    if len(head) < 2:
        return 2
    size = 2 + {126: 2, 127: 8}.get(head[1] & 0x7F, 0)
    return size + (4 if head[1] & 0x80 else 0)


def _payload_len(head: bytes | bytearray) -> int:
    short = head[1] & 0x7F
    if short == 126:
        return int(struct.unpack_from("!H", head, 2)[0])
    if short == 127:
        return int(struct.unpack_from("!Q", head, 2)[0])
    return short


class _FrameGate:
    """Follows frame boundaries in the raw stream and stops it at the header of
    the first frame that would break ``max_frame`` or ``max_message``."""

    def __init__(self, max_frame: int, max_message: int) -> None:
        self.max_frame = max_frame
        self.max_message = max_message
        self._head = bytearray()  # a header not yet complete
        self._skip = 0  # payload bytes of the current frame still to pass through
        self._message = 0  # payload announced so far by the current data message

    def feed(self, data: bytes) -> tuple[bytes, str | None]:
        """Return (bytes that may go on to the parser, refusal or None)."""
        out = bytearray()
        view, i = memoryview(data), 0
        while i < len(data):
            if self._skip:
                take = min(self._skip, len(data) - i)
                out += view[i : i + take]
                i, self._skip = i + take, self._skip - take
                continue
            take = min(_header_size(self._head) - len(self._head), len(data) - i)
            self._head += view[i : i + take]
            i += take
            if len(self._head) < _header_size(self._head):
                continue
            refusal = self._check(self._head)
            if refusal:
                return bytes(out), refusal
            out += self._head
            self._skip = _payload_len(self._head)
            self._head.clear()
        return bytes(out), None

    def _check(self, head: bytearray) -> str | None:
        opcode, fin, length = head[0] & 0x0F, head[0] & 0x80, _payload_len(head)
        # Control frames (§5.5) are capped at 125 by wsproto; a length with the
        # MSB set (§5.2) is left to wsproto to refuse as a protocol error.
        if opcode & 0x08 or length >> 63:
            return None
        if length > self.max_frame:
            return f"frame of {length} bytes exceeds the limit of {self.max_frame} bytes"
        total = length + (self._message if opcode == 0 else 0)
        if total > self.max_message:
            return f"message of {total} bytes exceeds the limit of {self.max_message} bytes"
        self._message = 0 if fin else total
        return None


# --------------------------------------------------------------------------- HTTP head
def _split_head(buf: bytes, max_head: int, max_headers: int) -> tuple[bytes, bytes] | None:
    """Cut the HTTP head off ``buf``; None if it is not complete yet.
    Bounded before any parsing so a huge or endless head costs nothing."""
    m = _HEAD_END.search(buf, 0, max_head + 4)
    if m is None:
        if len(buf) > max_head:
            raise _HandshakeError(f"HTTP head exceeds the limit of {max_head} bytes", 431)
        return None
    head, rest = buf[: m.end()], buf[m.end() :]
    if len(head) > max_head:
        raise _HandshakeError(f"HTTP head of {len(head)} bytes exceeds the limit of {max_head} bytes", 431)
    count = len(head.rstrip(b"\r\n").split(b"\n")) - 1
    if count > max_headers:
        raise _HandshakeError(f"HTTP head has {count} header fields, the limit is {max_headers}", 431)
    return head, rest


def _headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in raw:
        key, val = name.decode("latin-1").lower(), value.decode("latin-1")
        out[key] = f"{out[key]}, {val}" if key in out else val
    return out


def _has_token(value: str, token: str) -> bool:
    return any(t.strip().lower() == token for t in value.split(","))


def _parse_request(head: bytes) -> tuple[str, dict[str, str]]:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(head)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError as exc:
        raise _HandshakeError(f"malformed HTTP upgrade request: {exc}") from None
    if not isinstance(event, h11.Request):
        raise _HandshakeError("malformed HTTP upgrade request: incomplete head")
    if event.method != b"GET":  # §4.2.1 item 1: GET, HTTP/1.1 or higher
        raise _HandshakeError(f"upgrade request method must be GET, not {event.method.decode()}")
    if event.http_version != b"1.1":
        raise _HandshakeError(f"upgrade request must be HTTP/1.1, not HTTP/{event.http_version.decode()}")
    return event.target.decode("latin-1"), _headers(list(event.headers))


def _check_request(headers: dict[str, str]) -> bytes:
    """Validate a client's opening handshake (RFC 6455 §4.2.1) and return the
    Sec-WebSocket-Accept value (§4.2.2 item 5). Origin is not checked: Yuneta
    sends "ip:port" with no scheme, and §4.2.2 leaves its use to the server."""
    if not _has_token(headers.get("upgrade", ""), "websocket"):
        raise _HandshakeError("upgrade request lacks 'Upgrade: websocket'")
    if not _has_token(headers.get("connection", ""), "upgrade"):
        raise _HandshakeError("upgrade request lacks 'Connection: Upgrade'")
    if headers.get("sec-websocket-version", "").strip() != "13":
        # §4.4: answer 426 with the version we speak.
        raise _HandshakeError("upgrade request has no 'Sec-WebSocket-Version: 13'", 426)
    key = headers.get("sec-websocket-key", "").strip()
    try:
        nonce = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        nonce = b""
    if len(nonce) != 16:  # §4.1 item 7: base64 of a 16-byte value
        raise _HandshakeError(f"bad Sec-WebSocket-Key {key!r}: not base64 of 16 bytes")
    return generate_accept_token(key.encode("ascii"))


def _parse_response(head: bytes, resource: str) -> dict[str, str]:
    conn = h11.Connection(h11.CLIENT)
    # h11 reads a response only after it has sent a request: replay ours.
    conn.send(h11.Request(method="GET", target=resource, headers=[
        ("Host", "x"), ("Upgrade", "websocket"), ("Connection", "Upgrade")]))
    conn.receive_data(head)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError as exc:
        raise _HandshakeError(f"malformed HTTP upgrade response: {exc}") from None
    if not isinstance(event, (h11.Response, h11.InformationalResponse)):
        raise _HandshakeError("malformed HTTP upgrade response: incomplete head")
    if event.status_code != 101:  # §4.1: anything else is a refusal
        reason = event.reason.decode("latin-1")
        raise _HandshakeError(f"server refused the upgrade: HTTP {event.status_code} {reason}")
    return _headers(list(event.headers))


def _check_response(headers: dict[str, str], key: str) -> None:
    """The client's checks of the server's handshake (RFC 6455 §4.1, items 2-6)."""
    if not _has_token(headers.get("upgrade", ""), "websocket"):
        raise _HandshakeError("upgrade response lacks 'Upgrade: websocket'")
    if not _has_token(headers.get("connection", ""), "upgrade"):
        raise _HandshakeError("upgrade response lacks 'Connection: Upgrade'")
    expected = generate_accept_token(key.encode("ascii")).decode("ascii")
    got = headers.get("sec-websocket-accept", "")
    if got != expected:
        raise _HandshakeError(f"bad Sec-WebSocket-Accept {got!r}, expected {expected!r}")
    for name in ("sec-websocket-extensions", "sec-websocket-protocol"):
        if name in headers:  # §4.1 items 5-6: we offered none
            raise _HandshakeError(f"server chose {name} {headers[name]!r} that was not offered")


def _http_error(status: int) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}", "Connection: close", "Content-Length: 0"]
    if status == 426:
        lines.append("Sec-WebSocket-Version: 13")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def _utf8_chunks(text: str, size: int) -> list[str]:
    """Split ``text`` into pieces whose UTF-8 forms fit ``size`` bytes, cutting
    only between characters (every text fragment must stay valid, §5.6)."""
    raw, out, i = text.encode("utf-8"), [], 0
    while i < len(raw):
        j = min(i + size, len(raw))
        while j < len(raw) and (raw[j] & 0xC0) == 0x80:
            j -= 1  # back off a continuation byte
        out.append(raw[i:j].decode("utf-8"))
        i = j
    return out or [""]


# --------------------------------------------------------------------------- endpoint
class WSEndpoint:
    """One side of one WebSocket connection, bytes in, events out."""

    def __init__(
        self,
        role: str,
        max_frame: int = 1 << 20,
        max_message: int = 4 << 20,
        max_head: int = 16 << 10,
        max_headers: int = 64,
        user_agent: str = DEFAULT_USER_AGENT,
    ) -> None:
        if role not in ("server", "client"):
            raise ValueError(f"role must be 'server' or 'client', not {role!r}")
        self.role = role
        self.max_frame, self.max_message = max_frame, max_message
        self.max_head, self.max_headers = max_head, max_headers
        self.user_agent = user_agent
        self._gate = _FrameGate(max_frame, max_message)
        self._conn: Connection | None = None
        self._head_buf = b""
        self._out = bytearray()
        self._parts: list[str | bytes] = []
        self._dead = False  # failed, or TCP gone: ignore everything from now on
        self._resource = "/"
        self._key: str | None = None

    # ---------------------------------------------------------------- state
    @property
    def state(self) -> str:
        """'connecting', 'open', 'closing' or 'closed'."""
        if self._dead:
            return "closed"
        if self._conn is None:
            return "connecting"
        st = self._conn.state
        if st is ConnectionState.OPEN:
            return "open"
        return "closed" if st is ConnectionState.CLOSED else "closing"

    def data_to_send(self) -> bytes:
        """Bytes the endpoint produced by itself while receiving."""
        out, self._out = bytes(self._out), bytearray()
        return out

    # ---------------------------------------------------------------- client handshake
    def initiate(self, host: str, port: int, resource: str = "/", origin: str | None = None,
                 key: str | None = None) -> bytes:
        """The client's opening handshake, in Yuneta's order of fields.
        ``origin`` is Yuneta's "local-ip:local-port" (no scheme); None leaves it
        out (§4.1: only browsers must send it). The key is base64 of 16
        upper-case hex characters, as Yuneta makes it; any 16 bytes satisfy §4.1."""
        if self.role != "client" or self._key is not None:
            raise WSStateError("initiate() is for a fresh client endpoint")
        self._key = key or base64.b64encode(secrets.token_hex(8).upper().encode()).decode()
        self._resource = resource
        lines = [f"GET {resource} HTTP/1.1", f"User-Agent: {self.user_agent}",
                 "Upgrade: websocket", "Connection: Upgrade", f"Host: {host}:{port}"]
        if origin is not None:
            lines.append(f"Origin: {origin}")
        lines += [f"Sec-WebSocket-Key: {self._key}", "Sec-WebSocket-Version: 13"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    # ---------------------------------------------------------------- receiving
    def receive_data(self, data: bytes) -> list[WSEvent]:
        """Feed bytes read from TCP; ``b""`` means the peer closed it."""
        if self._dead or (self._conn is not None and self._conn.state is ConnectionState.CLOSED):
            return []
        if not data:
            return self._eof()
        if self._conn is None:
            return self._receive_head(data)
        return self._receive_frames(data)

    def _eof(self) -> list[WSEvent]:
        # §7.1.5: with no Close frame the close code is 1006. Yuneta's ycommand
        # always ends this way, so it is reported as a close, not an error.
        during = "the opening handshake" if self._conn is None else "the session"
        self._dead = True
        return [Closed(CLOSE_ABNORMAL, f"TCP closed without a Close frame during {during}", clean=False)]

    def _receive_head(self, data: bytes) -> list[WSEvent]:
        if self.role == "client" and self._key is None:
            return [self._fail_handshake(_HandshakeError("data received before initiate()"))]
        self._head_buf += data
        try:
            split = _split_head(self._head_buf, self.max_head, self.max_headers)
            if split is None:
                return []
            head, rest = split
            opened = self._accept(head) if self.role == "server" else self._connect(head)
        except _HandshakeError as exc:
            return [self._fail_handshake(exc)]
        self._head_buf = b""
        return [opened] + (self._receive_frames(rest) if rest else [])

    def _accept(self, head: bytes) -> Opened:
        path, headers = _parse_request(head)
        accept = _check_request(headers)
        # The answer Yuneta's agent gives, field for field (§4.2.2 item 5).
        self._out += (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                      b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        self._conn = Connection(ConnectionType.SERVER)
        return Opened(path, headers)

    def _connect(self, head: bytes) -> Opened:
        assert self._key is not None
        headers = _parse_response(head, self._resource)
        _check_response(headers, self._key)
        self._conn = Connection(ConnectionType.CLIENT)
        return Opened(self._resource, headers)

    def _fail_handshake(self, exc: _HandshakeError) -> ProtocolError:
        # §4.2.1: a server that cannot accept the handshake answers an HTTP error.
        if self.role == "server":
            self._out += _http_error(exc.status)
        self._dead = True
        return ProtocolError(str(exc), None)

    def _receive_frames(self, data: bytes) -> list[WSEvent]:
        passed, refusal = self._gate.feed(data)
        events: list[WSEvent] = []
        if passed:
            assert self._conn is not None
            self._conn.receive_data(passed)
            events = self._drain()
        if refusal and not self._dead and self.state != "closed":
            events.append(self._fail(refusal, CLOSE_TOO_BIG))
        return events

    def _drain(self) -> list[WSEvent]:
        assert self._conn is not None
        events: list[WSEvent] = []
        for ev in self._conn.events():
            if isinstance(ev, Message):
                events += self._on_message(ev)
            elif isinstance(ev, Ping) and self._conn.state is ConnectionState.OPEN:
                self._out += self._conn.send(ev.response())  # §5.5.2: answer Ping with Pong
            elif isinstance(ev, CloseConnection):
                events.append(self._on_close(ev))
                break
        return events

    def _on_message(self, ev: Message) -> list[WSEvent]:
        self._parts.append(ev.data)
        if not ev.message_finished:
            return []
        parts, self._parts = self._parts, []
        if isinstance(ev, TextMessage):
            return [Text("".join(parts))]  # type: ignore[arg-type]
        assert isinstance(ev, BytesMessage)
        return [Binary(b"".join(parts))]  # type: ignore[arg-type]

    def _on_close(self, ev: CloseConnection) -> WSEvent:
        assert self._conn is not None
        st = self._conn.state
        if st in (ConnectionState.OPEN, ConnectionState.LOCAL_CLOSING):
            # wsproto reports a parse failure as a CloseConnection without
            # changing state; a real Close frame always moves the state.
            return self._fail(ev.reason or "protocol error", int(ev.code))
        if st is ConnectionState.REMOTE_CLOSING:
            self._out += self._conn.send(ev.response())  # §5.5.1: echo the Close
        return Closed(int(ev.code), ev.reason or "", clean=True)

    def _fail(self, reason: str, code: int) -> ProtocolError:
        """_Fail the WebSocket Connection_ (§7.1.7): send Close if we still may."""
        assert self._conn is not None
        if self._conn.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            self._out += self._conn.send(CloseConnection(code=code, reason=reason))
        self._dead = True
        return ProtocolError(reason, code)

    # ---------------------------------------------------------------- sending
    def send_text(self, text: str) -> bytes:
        size = len(text.encode("utf-8"))
        self._check_send(size)
        if size <= self.max_frame:
            return self._send_parts([text])
        return self._send_parts(_utf8_chunks(text, self.max_frame))

    def send_binary(self, data: bytes) -> bytes:
        self._check_send(len(data))
        step = self.max_frame
        parts = [data[i : i + step] for i in range(0, len(data), step)] or [b""]
        return self._send_parts(parts)

    def _check_send(self, size: int) -> None:
        if self.state != "open":
            raise WSStateError(f"cannot send a message in state {self.state!r}")
        if size > self.max_message:
            raise MessageTooBig(f"message of {size} bytes exceeds the limit of {self.max_message} bytes")

    def _send_parts(self, parts: list[str] | list[bytes]) -> bytes:
        # One frame per part, at most max_frame each, so a peer with the same
        # bounds accepts what we send (§5.4 fragmentation). Yuneta never fragments,
        # and with the default bounds no control message needs to.
        assert self._conn is not None
        out = bytearray()
        last = len(parts) - 1
        for n, part in enumerate(parts):
            ev = TextMessage(part, message_finished=n == last) if isinstance(part, str) \
                else BytesMessage(part, message_finished=n == last)
            out += self._conn.send(ev)
        return bytes(out)

    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> bytes:
        """Start (or finish) the closing handshake (§5.5.1); b"" if nothing to send."""
        if self._conn is None:
            self._dead = True
            return b""
        if self._dead or self._conn.state not in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            return b""
        return self._conn.send(CloseConnection(code=code, reason=reason))
