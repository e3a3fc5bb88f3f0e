"""msg_ievent: the codec, the builders against yuneta-wire.md, relays."""

from __future__ import annotations

import copy
import json
import pathlib
import re
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gobj import msg_ievent as mi
from gobj.msg_ievent import IEventError, decode, encode

WIRE_DOC = pathlib.Path("/work/shared/reference/yuneta-wire.md")

# The frames of yuneta-wire.md, joined back into one line each (the answer's
# schema is trimmed in the document, so only its trailer is kept here).
DOC_CARD = (
    '{"event":"EV_IDENTITY_CARD","kw":{"yuno_role":"ycommand","yuno_id":"","yuno_name":"",'
    '"yuno_tag":"","yuno_version":"7.16.1","yuno_release":"","yuneta_version":"7.16.1",'
    '"playing":false,"pid":25855,"watcher_pid":0,"jwt":"","username":"yuneta","launch_id":0,'
    '"yuno_startdate":"2026-12-04T15:55:11.585632162+0000",'
    '"id":"c221c6cd-5a83-469d-91a2-90a0f819c1f9","required_services":[],'
    '"__md_iev__":{"ievent_gate_stack":[{"dst_yuno":"","dst_role":"yuneta_agent",'
    '"dst_service":"__default_service__","src_yuno":"","src_role":"ycommand",'
    '"src_service":"ws://127.0.0.1:1991","user":"yuneta","host":"vm"}],'
    '"__msg_type__":"__identity__"}}}'
)
DOC_COMMAND = (
    '{"event":"EV_MT_COMMAND","kw":{"__md_iev__":{"command_stack":[{"command":"list-yunos","kw":{}}],'
    '"ievent_gate_stack":[{"dst_yuno":"","dst_role":"yuneta_agent","dst_service":"__default_service__",'
    '"src_yuno":"","src_role":"ycommand","src_service":"ycommand","user":"yuneta","host":"vm"}],'
    '"__msg_type__":"__command__"},"__command__":"list-yunos"}}'
)
DOC_ACK = (
    '{"event":"EV_IDENTITY_CARD_ACK","kw":{"result":0,'
    '"comment":"User yuneta authenticated by local ip","username":"yuneta","session_id":"",'
    '"dst_service":"__default_service__","services_roles":{"__default_service__":["root"]},'
    '"superuser":true,'
    '"__md_iev__":{"ievent_gate_stack":[{"dst_yuno":"","dst_role":"ycommand",'
    '"dst_service":"ws://127.0.0.1:1991","src_yuno":"vm","src_role":"yuneta_agent",'
    '"src_service":"input-0","user":"yuneta","host":"vm"}],"__msg_type__":"__identity__"},'
    '"__md_yuno__":{"realm_name":"","yuno_role":"yuneta_agent","yuno_name":"vm","yuno_id":""}}}'
)
DOC_ANSWER_KEYS = ["result", "comment", "schema", "data", "__md_iev__", "__md_yuno__"]
DOC_ANSWER_MD_IEV = json.loads(
    '{"command_stack":[{"command":"list-yunos","kw":{}}],'
    '"ievent_gate_stack":[{"dst_yuno":"","dst_role":"ycommand","dst_service":"ycommand",'
    '"src_yuno":"vm","src_role":"yuneta_agent","src_service":"input-0","user":"yuneta",'
    '"host":"vm","input_service":"__input_side__","input_channel":"input-0",'
    '"__username__":"yuneta"}],"__msg_type__":"__command__"}'
)
DOC_MD_YUNO = {"realm_name": "", "yuno_role": "yuneta_agent", "yuno_name": "vm", "yuno_id": ""}
AGENT = mi.md_yuno("yuneta_agent", "vm")


def doc_card() -> mi.IEvent:
    return mi.identity_card(
        "ycommand", "", "", 25855, "", "yuneta_agent", "__default_service__",
        "ws://127.0.0.1:1991", "yuneta", "vm", "7.16.1", yuneta_version="7.16.1",
        yuno_startdate="2026-12-04T15:55:11.585632162+0000",
        node_id="c221c6cd-5a83-469d-91a2-90a0f819c1f9")


def doc_command(line: str = "list-yunos", kw: dict[str, Any] | None = None) -> mi.IEvent:
    return mi.command(line, kw or {}, "yuneta_agent", "__default_service__", "ycommand",
                      "ycommand", "yuneta", "vm")


def keys_deep(obj: Any) -> Any:
    """The shape of a value: the key order of every dict, recursively."""
    if isinstance(obj, dict):
        return [(k, keys_deep(v)) for k, v in obj.items()]
    if isinstance(obj, list):
        return [keys_deep(v) for v in obj]
    return None


# --------------------------------------------------------------------------- the document itself
def _doc_frames() -> dict[str, Any]:
    text = WIRE_DOC.read_text()
    text = re.sub(r"\s*<-[^\n]*", "", text)  # the document's margin notes
    frames = {}
    for m in re.finditer(r'\{"event":"(EV_[A-Z_]+)"', text):
        depth, i = 0, m.start()
        for i in range(m.start(), len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                break
        try:
            frames.setdefault(m.group(1), json.loads(text[m.start(): i + 1]))
        except json.JSONDecodeError:
            pass  # the answer, whose schema the document trims with "..."
    return frames


@pytest.mark.skipif(not WIRE_DOC.exists(), reason="shared reference not present")
def test_embedded_frames_are_the_documents() -> None:
    frames = _doc_frames()
    assert frames["EV_IDENTITY_CARD"] == json.loads(DOC_CARD)
    assert frames["EV_MT_COMMAND"] == json.loads(DOC_COMMAND)
    assert frames["EV_IDENTITY_CARD_ACK"] == json.loads(DOC_ACK)


# --------------------------------------------------------------------------- builders vs the capture
def test_identity_card_is_the_captured_one_byte_for_byte() -> None:
    text = encode(*doc_card())
    assert text == DOC_CARD and len(text.encode()) == 621


def test_command_is_the_captured_one_byte_for_byte() -> None:
    text = encode(*doc_command())
    assert text == DOC_COMMAND and len(text.encode()) == 343
    assert len(encode(*doc_command("help")).encode()) == 331  # the document's help command


def test_identity_ack_is_the_captured_one_byte_for_byte() -> None:
    card = doc_card()
    before = copy.deepcopy(card.kw)
    ack = mi.identity_ack(card.kw, 0, "User yuneta authenticated by local ip", "yuneta_agent",
                          "vm", "input-0", "yuneta",
                          services_roles={"__default_service__": ["root"]}, superuser=True)
    text = encode(*ack)
    assert text == DOC_ACK and len(text.encode()) == 563
    assert card.kw == before  # the card is not changed


def test_identity_ack_reversal_rules() -> None:
    card_hop = doc_card().kw["__md_iev__"]["ievent_gate_stack"][0]
    ack = mi.identity_ack(doc_card().kw, 0, "", "yuneta_agent", "vm", "input-0", "yuneta")
    hop = ack.kw["__md_iev__"]["ievent_gate_stack"][0]
    for side in ("yuno", "role", "service"):  # dst_* <- the card's src_*
        assert hop[f"dst_{side}"] == card_hop[f"src_{side}"]
    assert hop["src_service"] == "input-0"  # the channel name
    assert hop["src_yuno"] == "vm" and hop["src_role"] == "yuneta_agent"
    assert ack.kw["dst_service"] == card_hop["dst_service"]
    assert ack.kw["__md_yuno__"] == DOC_MD_YUNO


def test_command_answer_has_the_captured_shape() -> None:
    cmd = doc_command()
    before = copy.deepcopy(cmd.kw)
    ans = mi.command_answer(cmd.kw, {"result": 0, "comment": "", "schema": [{"id": "id"}], "data": []},
                            "input-0", "yuneta", AGENT)
    assert ans.event == "EV_MT_COMMAND_ANSWER"
    assert list(ans.kw) == DOC_ANSWER_KEYS
    assert ans.kw["__md_iev__"] == DOC_ANSWER_MD_IEV
    assert keys_deep(ans.kw["__md_iev__"]) == keys_deep(DOC_ANSWER_MD_IEV)  # key order too
    assert ans.kw["__md_yuno__"] == DOC_MD_YUNO
    req_hop = cmd.kw["__md_iev__"]["ievent_gate_stack"][0]
    hop = ans.kw["__md_iev__"]["ievent_gate_stack"][0]
    assert hop["dst_service"] == req_hop["src_service"] == "ycommand"
    assert cmd.kw == before


def test_text_answer_carries_null_schema_and_data() -> None:
    ans = mi.command_answer(doc_command("help").kw, {"result": 0, "comment": "Available commands"},
                            "input-0", "yuneta", AGENT)
    assert ans.kw["schema"] is None and ans.kw["data"] is None
    assert ans.kw["__md_iev__"]["command_stack"] == [{"command": "help", "kw": {}}]


def test_command_kw_travels_beside_the_metadata() -> None:
    cmd = doc_command("command-yuno command=reload-certs", {"service": "__yuno__"})
    assert list(cmd.kw) == ["__md_iev__", "service", "__command__"]
    assert cmd.kw["__command__"] == "command-yuno command=reload-certs"


def test_stats_pair() -> None:
    req = mi.stats("__reset__", {"service": "echo"}, "yuneta_agent", "__default_service__",
                   "ycommand", "ycommand", "yuneta", "vm")
    assert req.event == "EV_MT_STATS"
    md = req.kw["__md_iev__"]
    assert md["stats_stack"] == [{"stats": "__reset__", "kw": {}}]
    assert md["__msg_type__"] == "__stats__" and req.kw["__stats__"] == "__reset__"
    ans = mi.stats_answer(req.kw, {"result": 0, "data": {"rx": 1}}, "input-1", "yuneta", AGENT)
    assert ans.event == "EV_MT_STATS_ANSWER" and list(ans.kw) == DOC_ANSWER_KEYS
    assert ans.kw["__md_iev__"]["stats_stack"] == md["stats_stack"]
    assert ans.kw["__md_iev__"]["ievent_gate_stack"][0]["src_service"] == "input-1"


# --------------------------------------------------------------------------- relays
def test_relay_through_the_agent_keeps_the_answers_route() -> None:
    # ycommand -> agent (channel input-0)
    request = doc_command("command-yuno command=view-attrs service=__yuno__").kw
    at_agent = mi.mark_input(request, "input-0", "yuneta")
    # agent -> yuno on its channel input-7: its own hop and the relayed line on top
    hop = mi.gate_entry("echo", "__yuno__", "yuneta_agent", "input-7", "yuneta", "vm", src_yuno="vm")
    relayed = mi.relay_command(at_agent, "view-attrs", hop)
    assert [h["dst_role"] for h in relayed["__md_iev__"]["ievent_gate_stack"]] == ["echo", "yuneta_agent"]
    # the yuno answers on its client channel
    echo = mi.md_yuno("echo", "echo1", "e-1")
    answer = mi.command_answer(relayed, {"result": 0, "comment": "ok", "data": {"a": 1}},
                               "agent_client", "yuneta", echo)
    # back at the agent: pop its hop; the caller's hop is on top again
    yuno_hop, back = mi.unrelay_answer(answer.kw)
    assert yuno_hop["src_role"] == "echo" and yuno_hop["dst_service"] == "input-7"
    top = mi.top_gate(back)
    assert top["input_channel"] == "input-0"  # where to send it
    final = mi.answer_back(back, AGENT)
    stack = final.kw["__md_iev__"]["ievent_gate_stack"]
    assert len(stack) == 1
    assert (stack[0]["dst_role"], stack[0]["dst_service"]) == ("ycommand", "ycommand")
    assert (stack[0]["src_yuno"], stack[0]["src_role"], stack[0]["src_service"]) == ("vm", "yuneta_agent", "input-0")
    assert final.kw["__md_iev__"]["command_stack"] == request["__md_iev__"]["command_stack"]
    assert final.kw["data"] == {"a": 1} and final.kw["__md_yuno__"] == echo
    assert set(stack[0]) == set(DOC_ANSWER_MD_IEV["ievent_gate_stack"][0])


def test_push_pop_do_not_change_their_input() -> None:
    kw = doc_command().kw
    before = copy.deepcopy(kw)
    pushed = mi.push_gate(kw, {"dst_role": "x"})
    top, popped = mi.pop_gate(pushed)
    assert top == {"dst_role": "x"} and popped == kw == before
    _, empty = mi.pop_gate(kw)
    with pytest.raises(IEventError, match="ievent_gate_stack is empty"):
        mi.pop_gate(empty)


# --------------------------------------------------------------------------- codec
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1),
                      st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
json_value = st.recursive(json_leaf, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=10), kids, max_size=4)), max_leaves=30)
json_kw = st.dictionaries(st.text(max_size=12), json_value, max_size=8)
pack_value = st.recursive(st.one_of(json_leaf, st.binary(max_size=20)), lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=10), kids, max_size=4)), max_leaves=30)
event_name = st.text(min_size=1, max_size=30)


@settings(max_examples=200, deadline=None)
@given(event=event_name, kw=json_kw)
def test_json_round_trip(event: str, kw: dict[str, Any]) -> None:
    text = encode(event, kw)
    assert isinstance(text, str)
    assert decode(text, max_depth=100) == (event, kw)


@settings(max_examples=200, deadline=None)
@given(event=event_name, kw=st.dictionaries(st.text(max_size=12), pack_value, max_size=8))
def test_msgpack_round_trip(event: str, kw: dict[str, Any]) -> None:
    data = encode(event, kw, binary=True)
    assert isinstance(data, bytes)
    assert decode(data, max_depth=100) == (event, kw)


def test_json_is_compact_and_event_first() -> None:
    assert encode("EV_X", {"a": [1, 2], "b": "ñ"}) == '{"event":"EV_X","kw":{"a":[1,2],"b":"ñ"}}'


def nested(depth: int) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for _ in range(depth):
        obj = {"a": obj}
    return obj


DECODE_ERRORS: list[tuple[str | bytes, str]] = [
    ("{not json", "invalid JSON"),
    ("", "invalid JSON"),
    ('{"event":"E"} trailing', "invalid JSON"),
    ("[1,2]", "not an object but list"),
    ('"EV_X"', "not an object but str"),
    ('{"kw":{}}', "no 'event'"),
    ('{"event":5,"kw":{}}', "'event' must be a non-empty string"),
    ('{"event":"","kw":{}}', "'event' must be a non-empty string"),
    ('{"event":"E","kw":[]}', "'kw' of E must be an object, not list"),
    ('{"event":"E","kw":"x"}', "'kw' of E must be an object, not str"),
    (json.dumps({"event": "E", "kw": nested(40)}), "nesting deeper than 32"),
    ('{"event":"E","kw":' + "[" * 100000 + "]" * 100000 + "}", "nesting deeper than 32"),
    (b"\xc1", "invalid msgpack"),
    (b"", "invalid msgpack"),
    (msgpack.packb({"event": "E", "kw": {}}) + b"\x00", "extra data"),
    (msgpack.packb([1, 2]), "not an object but list"),
    (msgpack.packb({1: 2}), "invalid msgpack"),
    (msgpack.packb({"event": None, "kw": {}}), "'event' must be"),
    (msgpack.packb({"event": "E", "kw": b"x"}), "'kw' of E must be an object, not bytes"),
    (msgpack.packb({"event": "E", "kw": nested(40)}), "nesting deeper than 32"),
    (b"\x91" * 100000, "nesting deeper than"),
]


@pytest.mark.parametrize("data,words", DECODE_ERRORS, ids=range(len(DECODE_ERRORS)))
def test_decode_errors_are_named(data: str | bytes, words: str) -> None:
    with pytest.raises(IEventError, match=re.escape(words)):
        decode(data)


def test_depth_limit_is_exact() -> None:
    # the outer object is level 1 and kw level 2: nested(30) reaches level 32
    assert decode(json.dumps({"event": "E", "kw": nested(30)})).kw == nested(30)
    assert decode(msgpack.packb({"event": "E", "kw": nested(30)})).kw == nested(30)
    for data in (json.dumps({"event": "E", "kw": nested(31)}), msgpack.packb({"event": "E", "kw": nested(31)})):
        with pytest.raises(IEventError, match="nesting deeper than 32"):
            decode(data)


def test_missing_kw_is_empty() -> None:
    assert decode('{"event":"EV_PLAY_YUNO"}') == ("EV_PLAY_YUNO", {})


@pytest.mark.parametrize("kw,binary", [({"x": float("nan")}, False), ({"x": b"raw"}, False),
                                      ({"x": object()}, True), ({"x": 2**70}, True)])
def test_encode_errors_are_named(kw: dict[str, Any], binary: bool) -> None:
    with pytest.raises(IEventError, match="cannot encode 'EV_X'"):
        encode("EV_X", kw, binary=binary)
