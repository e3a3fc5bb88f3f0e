"""WSEndpoint: client and server pumped in memory, plus one real loopback socket."""

from __future__ import annotations

import os
import socket
import struct
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gobj.websocket_proto import (
    Binary,
    Closed,
    MessageTooBig,
    Opened,
    ProtocolError,
    Text,
    WSEndpoint,
    WSStateError,
)

# The upgrade exactly as Yuneta 7.16.1's ycommand sent it (reference/yuneta-wire.md).
YUNETA_REQUEST = (
    b"GET / HTTP/1.1\r\n"
    b"User-Agent: yuneta-7.16.1\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Host: 127.0.0.1:1991\r\n"
    b"Origin: 127.0.0.1:56186\r\n"
    b"Sec-WebSocket-Key: NkIxMkUyNUYyMkYzNjJCQg==\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"\r\n"
)
YUNETA_RESPONSE = (
    b"HTTP/1.1 101 Switching Protocols\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: uVxEYLctQUAkwFWBxhg/oR0FYhg=\r\n"
    b"\r\n"
)


def frame(opcode: int, payload: bytes, fin: bool = True, mask: bool = True,
          rsv: int = 0, length: int | None = None) -> bytes:
    """A raw frame (RFC 6455 §5.2), built by hand so tests can break the rules."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    mbit = 0x80 if mask else 0
    if n < 126:
        head += bytes([mbit | n])
    elif n < 1 << 16:
        head += bytes([mbit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mbit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def close_code(data: bytes) -> int:
    """The status code of a single Close frame, masked or not."""
    assert data[0] == 0x88, data[:2]
    n = data[1] & 0x7F
    if data[1] & 0x80:
        key = data[2:6]
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(data[6:6 + n]))
    else:
        payload = data[2:2 + n]
    return int(struct.unpack("!H", payload[:2])[0])


def open_pair(**kw: int) -> tuple[WSEndpoint, WSEndpoint]:
    client, server = WSEndpoint("client", **kw), WSEndpoint("server", **kw)
    events = server.receive_data(client.initiate("127.0.0.1", 1991, origin="127.0.0.1:50000"))
    assert isinstance(events[0], Opened)
    assert isinstance(client.receive_data(server.data_to_send())[0], Opened)
    assert client.state == server.state == "open"
    return client, server


# --------------------------------------------------------------------------- handshake
def test_client_request_is_yunetas_byte_for_byte() -> None:
    client = WSEndpoint("client", user_agent="yuneta-7.16.1")
    req = client.initiate("127.0.0.1", 1991, origin="127.0.0.1:56186", key="NkIxMkUyNUYyMkYzNjJCQg==")
    assert req == YUNETA_REQUEST and len(req) == 205


def test_client_key_has_yunetas_shape() -> None:
    import base64
    req = WSEndpoint("client").initiate("127.0.0.1", 1991)
    key = [l for l in req.split(b"\r\n") if l.startswith(b"Sec-WebSocket-Key:")][0].split(b": ")[1]
    raw = base64.b64decode(key)
    assert len(raw) == 16 and raw == raw.upper() and int(raw, 16) >= 0


def test_server_accepts_yunetas_request_exactly() -> None:
    server = WSEndpoint("server")
    events = server.receive_data(YUNETA_REQUEST)
    assert events == [Opened("/", {
        "user-agent": "yuneta-7.16.1", "upgrade": "websocket", "connection": "Upgrade",
        "host": "127.0.0.1:1991", "origin": "127.0.0.1:56186",
        "sec-websocket-key": "NkIxMkUyNUYyMkYzNjJCQg==", "sec-websocket-version": "13"})]
    out = server.data_to_send()
    assert out == YUNETA_RESPONSE and len(out) == 129


def test_handshake_fed_byte_by_byte_with_pipelined_frames() -> None:
    client, server = WSEndpoint("client"), WSEndpoint("server")
    # ycommand pipelines: the card and the command right after the upgrade.
    wire = client.initiate("h", 1)
    events = []
    for b in wire:
        events += server.receive_data(bytes([b]))
    assert isinstance(events[0], Opened)
    events = client.receive_data(server.data_to_send() + server.send_text("card") + server.send_text("cmd"))
    assert [type(e) for e in events] == [Opened, Text, Text]
    assert [e.data for e in events[1:]] == ["card", "cmd"]  # type: ignore[union-attr]


def test_server_gets_frames_in_the_same_segment_as_the_upgrade() -> None:
    server = WSEndpoint("server")
    events = server.receive_data(YUNETA_REQUEST + frame(1, b"card") + frame(1, b"command"))
    assert events[1:] == [Text("card"), Text("command")]


BAD_REQUESTS = [
    (YUNETA_REQUEST.replace(b"GET", b"POST"), 400, "method must be GET"),
    (YUNETA_REQUEST.replace(b"Upgrade: websocket\r\n", b""), 400, "Upgrade: websocket"),
    (YUNETA_REQUEST.replace(b"Connection: Upgrade", b"Connection: keep-alive"), 400, "Connection: Upgrade"),
    (YUNETA_REQUEST.replace(b"Version: 13", b"Version: 8"), 426, "Sec-WebSocket-Version: 13"),
    (YUNETA_REQUEST.replace(b"NkIxMkUyNUYyMkYzNjJCQg==", b"c2hvcnQ="), 400, "Sec-WebSocket-Key"),
    (YUNETA_REQUEST.replace(b"NkIxMkUyNUYyMkYzNjJCQg==", b"!!notbase64!!"), 400, "Sec-WebSocket-Key"),
    (YUNETA_REQUEST.replace(b"Host: 127.0.0.1:1991\r\n", b""), 400, "Host"),
    (b"HELLO\r\n\r\n", 400, "malformed HTTP upgrade request"),
    (YUNETA_REQUEST.replace(b"HTTP/1.1", b"HTTP/1.0"), 400, "must be HTTP/1.1"),
    (YUNETA_REQUEST.replace(b"Upgrade: websocket\r\n", b"Upgrade : websocket\r\n"), 400, "malformed"),
]


@pytest.mark.parametrize("request_bytes,status,words", BAD_REQUESTS)
def test_bad_upgrade_request_is_named_and_answered(request_bytes: bytes, status: int, words: str) -> None:
    server = WSEndpoint("server")
    events = server.receive_data(request_bytes)
    assert len(events) == 1 and isinstance(events[0], ProtocolError)
    assert words in events[0].reason and events[0].close_code is None
    out = server.data_to_send()
    assert out.startswith(b"HTTP/1.1 %d " % status)
    if status == 426:  # RFC 6455 §4.4
        assert b"Sec-WebSocket-Version: 13\r\n" in out
    assert server.state == "closed" and server.receive_data(frame(1, b"x")) == []


def test_upgrade_head_is_bounded_before_its_end_arrives() -> None:
    server = WSEndpoint("server", max_head=16384)
    events = server.receive_data(b"GET / HTTP/1.1\r\nX-Pad: " + b"a" * 17000)
    assert isinstance(events[0], ProtocolError) and "16384" in events[0].reason
    assert server.data_to_send().startswith(b"HTTP/1.1 431 ")


def test_upgrade_header_count_is_bounded() -> None:
    server = WSEndpoint("server", max_headers=64)
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(70))
    events = server.receive_data(YUNETA_REQUEST.replace(b"\r\n\r\n", b"\r\n" + many + b"\r\n"))
    assert isinstance(events[0], ProtocolError) and "77 header fields" in events[0].reason
    assert server.data_to_send().startswith(b"HTTP/1.1 431 ")


@pytest.mark.parametrize("response,words", [
    (b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n", "refused the upgrade: HTTP 403"),
    (YUNETA_RESPONSE.replace(b"uVxEYLctQUAkwFWBxhg", b"AAAAAAAAAAAAAAAAAAA"), "Sec-WebSocket-Accept"),
    (YUNETA_RESPONSE.replace(b"Upgrade: websocket\r\n", b""), "Upgrade: websocket"),
    (YUNETA_RESPONSE.replace(b"\r\n\r\n", b"\r\nSec-WebSocket-Extensions: x\r\n\r\n"), "not offered"),
    (b"garbage\r\n\r\n", "malformed HTTP upgrade response"),
])
def test_bad_upgrade_response_is_named(response: bytes, words: str) -> None:
    client = WSEndpoint("client")
    client.initiate("127.0.0.1", 1991, key="NkIxMkUyNUYyMkYzNjJCQg==")
    events = client.receive_data(response)
    assert isinstance(events[0], ProtocolError) and words in events[0].reason
    assert client.state == "closed"


# --------------------------------------------------------------------------- messages
def test_text_and_binary_both_ways() -> None:
    client, server = open_pair()
    assert server.receive_data(client.send_text("hola ñandú €")) == [Text("hola ñandú €")]
    assert server.receive_data(client.send_binary(b"\x00\xff" * 10)) == [Binary(b"\x00\xff" * 10)]
    assert client.receive_data(server.send_text("{}")) == [Text("{}")]
    assert client.receive_data(server.send_binary(b"")) == [Binary(b"")]


def test_client_masks_and_server_does_not() -> None:
    client, server = open_pair()
    c = client.send_text("x" * 300)
    s = server.send_text("x" * 563)
    assert c[1] & 0x80 and b"x" * 16 not in c  # RFC 6455 §5.3: client frames are masked
    # §5.1: server frames are not; 81 7e 02 33 is the header of Yuneta's 563-byte ACK.
    assert s[:4] == bytes.fromhex("817e0233") and s[4:] == b"x" * 563


def test_fragments_are_reassembled_with_a_ping_between() -> None:
    client, server = open_pair()
    euro = "€".encode()  # split a character across fragments
    wire = frame(1, b"hel" + euro[:1], fin=False) + frame(9, b"p") + frame(0, euro[1:] + b"lo")
    events = []
    for i in range(0, len(wire), 3):
        events += server.receive_data(wire[i:i + 3])
    assert events == [Text("hel€lo")]
    assert server.data_to_send() == b"\x8a\x01p"  # §5.5.3: the Pong echoes the Ping


def test_own_fragmentation_respects_max_frame() -> None:
    client, server = open_pair(max_frame=10, max_message=1000)
    text = "ab€" * 20
    wire = client.send_text(text)
    assert server.receive_data(wire) == [Text(text)]
    assert server.receive_data(client.send_binary(bytes(range(95)))) == [Binary(bytes(range(95)))]


@settings(max_examples=60, deadline=None)
@given(msgs=st.lists(st.one_of(st.text(max_size=300), st.binary(max_size=300)), max_size=6),
       cut=st.integers(min_value=1, max_value=40))
def test_any_messages_any_chunking(msgs: list[str | bytes], cut: int) -> None:
    client, server = open_pair(max_frame=64, max_message=4096)
    wire = b"".join(client.send_text(m) if isinstance(m, str) else client.send_binary(m) for m in msgs)
    events = []
    for i in range(0, len(wire), cut):
        events += server.receive_data(wire[i:i + cut])
    assert [e.data for e in events] == msgs  # type: ignore[union-attr]


# --------------------------------------------------------------------------- bounds
def test_2gib_frame_is_refused_at_its_header() -> None:
    client, server = open_pair()
    header = frame(2, b"", length=2**31)  # announces 2 GiB, carries nothing yet
    events = server.receive_data(header)  # not one payload byte has arrived
    assert len(events) == 1 and isinstance(events[0], ProtocolError)
    assert events[0].close_code == 1009
    assert "2147483648" in events[0].reason and "1048576" in events[0].reason
    out = server.data_to_send()
    assert close_code(out) == 1009 and b"2147483648" in out
    assert server.state == "closed"
    assert server.receive_data(b"abc" * 1000) == []  # whatever follows is dropped
    assert len(server._gate._head) <= 14 and not server._parts  # nothing buffered


def test_2gib_frame_with_a_few_payload_bytes_in_the_same_read() -> None:
    client, server = open_pair()
    events = server.receive_data(frame(1, b"", length=2**31) + b"abcd")
    assert [type(e) for e in events] == [ProtocolError] and events[0].close_code == 1009


def test_message_bound_over_fragments() -> None:
    client, server = open_pair(max_frame=100, max_message=250)
    wire = frame(2, b"a" * 100, fin=False) + frame(0, b"b" * 100, fin=False)
    assert server.receive_data(wire) == []
    events = server.receive_data(frame(0, b"", fin=True, length=100)[:8])  # header only
    assert isinstance(events[0], ProtocolError) and events[0].close_code == 1009
    assert "message of 300 bytes exceeds the limit of 250" in events[0].reason


def test_client_refuses_oversized_server_frame_and_masks_its_close() -> None:
    client, server = open_pair(max_frame=1000)
    events = client.receive_data(frame(1, b"", mask=False, length=70000))
    assert isinstance(events[0], ProtocolError) and events[0].close_code == 1009
    out = client.data_to_send()
    assert out[0] == 0x88 and out[1] & 0x80  # the client's Close is masked
    assert server.receive_data(out)[0] == Closed(1009, events[0].reason[:123], True)


def test_outgoing_bound_and_state_errors() -> None:
    client, server = open_pair(max_message=100)
    with pytest.raises(MessageTooBig, match="101 bytes exceeds the limit of 100"):
        client.send_binary(b"x" * 101)
    with pytest.raises(WSStateError):
        WSEndpoint("server").send_text("too early")


# --------------------------------------------------------------------------- malformed frames
MALFORMED = [
    (frame(1, b"hi", mask=False), 1002, "unmasked"),
    (frame(1, b"hi", rsv=0x40), 1002, "Reserved bit"),
    (frame(3, b"hi"), 1002, "opcode"),
    (frame(9, b"p", fin=False), 1002, "fragment control"),
    (frame(9, b"p" * 126), 1002, "125"),
    (frame(0, b"orphan"), 1002, "CONTINUATION"),
    (frame(1, b"a", fin=False) + frame(2, b"b"), 1002, "expected CONTINUATION"),
    (frame(1, b"\xff\xfe"), 1007, "utf-8"),
    (frame(1, b"", length=2**63 + 5), 1002, "non-zero MSB"),
    # a 16-bit length used for a 10-byte payload (§5.2: minimal encoding)
    (bytes([0x81, 0x80 | 126]) + struct.pack("!H", 10) + b"kkkk" + b"x" * 10, 1002, "2 bytes when 1"),
    (frame(8, struct.pack("!H", 999)), 1002, "CLOSE with invalid code"),
]


@pytest.mark.parametrize("wire,code,words", MALFORMED)
def test_malformed_frame_is_named_and_closed(wire: bytes, code: int, words: str) -> None:
    client, server = open_pair()
    events = server.receive_data(wire)
    errors = [e for e in events if isinstance(e, ProtocolError)]
    assert errors and errors[0].close_code == code and words.lower() in errors[0].reason.lower()
    assert close_code(server.data_to_send()) == code and server.state == "closed"


# --------------------------------------------------------------------------- closing
def test_bare_tcp_close_is_a_normal_close() -> None:
    client, server = open_pair()
    server.receive_data(client.send_text("list-yunos"))
    events = server.receive_data(b"")  # ycommand ends with RST, no Close frame
    assert events == [Closed(1006, events[0].reason, clean=False)]  # type: ignore[union-attr]
    assert server.data_to_send() == b"" and server.state == "closed"
    assert server.receive_data(b"") == []


def test_bare_close_during_handshake() -> None:
    server = WSEndpoint("server")
    server.receive_data(YUNETA_REQUEST[:50])
    events = server.receive_data(b"")
    assert isinstance(events[0], Closed) and "handshake" in events[0].reason


@pytest.mark.parametrize("initiator", ["client", "server"])
def test_closing_handshake(initiator: str) -> None:
    client, server = open_pair()
    a, b = (client, server) if initiator == "client" else (server, client)
    events = b.receive_data(a.close(1000, "bye"))
    assert events == [Closed(1000, "bye", True)]
    assert a.receive_data(b.data_to_send()) == [Closed(1000, "bye", True)]  # §5.5.1 echo
    assert a.state == b.state == "closed" and a.close() == b""


# --------------------------------------------------------------------------- real socket
def _serve(listener: socket.socket, seen: list[object]) -> None:
    conn, _ = listener.accept()
    ep = WSEndpoint("server")
    with conn:
        while True:
            try:
                data = conn.recv(65536)
            except ConnectionResetError:
                data = b""  # RST, as ycommand does it
            for ev in ep.receive_data(data):
                seen.append(ev)
                if isinstance(ev, Text):
                    conn.sendall(ep.send_text(ev.data.upper()))
            out = ep.data_to_send()
            if out:
                conn.sendall(out)
            if ep.state == "closed":
                return


def test_loopback_tcp_session_ending_with_rst() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[object] = []
    thread = threading.Thread(target=_serve, args=(listener, seen), daemon=True)
    thread.start()
    sock = socket.create_connection(listener.getsockname(), timeout=5)
    ip, port = sock.getsockname()
    client = WSEndpoint("client")
    # Upgrade, then the card and the command back to back, as ycommand does.
    sock.sendall(client.initiate(ip, listener.getsockname()[1], origin=f"{ip}:{port}"))
    got: list[object] = []
    while not any(isinstance(e, Opened) for e in got):
        got += client.receive_data(sock.recv(65536))
    sock.sendall(client.send_text("card" * 200) + client.send_text("command"))
    while len([e for e in got if isinstance(e, Text)]) < 2:
        got += client.receive_data(sock.recv(65536))
    assert [e.data for e in got if isinstance(e, Text)] == ["CARD" * 200, "COMMAND"]
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # RST
    thread.join(5)
    listener.close()
    assert not thread.is_alive()
    assert isinstance(seen[0], Opened) and seen[0].headers["origin"] == f"{ip}:{port}"
    assert isinstance(seen[-1], Closed) and seen[-1].code == 1006 and not seen[-1].clean
    assert not any(isinstance(e, ProtocolError) for e in seen)
