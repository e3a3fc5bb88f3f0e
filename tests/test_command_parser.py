"""The command line parser: round trips over generated lines, and its errors."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gobj import DTP, SDATAPM, SDF, Cmd, gclass_create, gobj_command, gobj_create
from gobj.command import CommandError, format_command_line, split_command_line, tokenize
from gobj.gclass import gclass_unregister
from tests.kernel_helpers import make_yuno, unique

word = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FF,
                                      blacklist_characters="'\"=;"), min_size=1, max_size=12)
value = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FF,
                                       blacklist_characters="\"\\"), max_size=20)
key = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_\-]{0,10}", fullmatch=True)


@settings(max_examples=300)
@given(name=word, positional=st.lists(value.filter(lambda v: "=" not in v), max_size=3),
       kw=st.dictionaries(key, value, max_size=4))
def test_round_trip(name, positional, kw):
    line = format_command_line(name, positional, kw)
    assert split_command_line(line) == (name, positional, kw)


def test_quotes_and_blanks():
    assert tokenize("a  b\t'c d'  e=\"f g\"") == ["a", "b", "c d", "e=f g"]
    with pytest.raises(CommandError, match="after key=value"):
        split_command_line("x k='a=b' 'p=q'")
    name, pos, kw = split_command_line("x 'p=q' k='a=b'")
    assert (name, pos, kw) == ("x", ["p=q"], {"k": "a=b"})
    with pytest.raises(CommandError, match="unclosed quote"):
        tokenize("x k='open")
    with pytest.raises(CommandError, match="empty"):
        split_command_line("   ")


calls = []


def cmd_go(gobj, cmd, kw, src):
    calls.append(dict(kw))
    from gobj import build_command_response
    return build_command_response(0, "went", None, kw)


@pytest.fixture
def gc():
    name = unique("C_CMDS")
    gc = gclass_create(name, event_types=[], states=[("ST", [])], commands=[
        Cmd("go-there", cmd_go, [
            SDATAPM(DTP.STRING, "place", SDF.REQUIRED, None, "where"),
            SDATAPM(DTP.INTEGER, "speed", SDF.NONE, 5, "how fast", aliases=("v",)),
            SDATAPM(DTP.BOOLEAN, "loud", SDF.NONE, None, "noise")],
            aliases=("go",), description="go"),
        Cmd("anything", cmd_go, [SDATAPM(DTP.STRING, "x", SDF.NONE, None, "x")], wild=True),
    ])
    calls.clear()
    yield gc
    gclass_unregister(name)


def test_names_aliases_keys_case_insensitive_positional_and_defaults(gc):
    g = gobj_create("g", gc, {}, make_yuno())
    r = gobj_command(g, "GO Paris V=0x10 LOUD=true")
    assert r == {"result": 0, "comment": "went", "schema": None,
                 "data": {"place": "Paris", "speed": 16, "loud": True}}
    r = gobj_command(g, "go-there place='New York'")
    assert r["data"] == {"place": "New York", "speed": 5}


def test_errors_name_the_problem(gc):
    g = gobj_create("g", gc, {}, make_yuno())
    cases = {
        "go": "parameter 'place' is required",
        "go Paris speed=fast": "parameter 'speed'",
        "go Paris color=red": "'go-there' command has no option 'color'",
        "go Paris Rome": "extra parameters",
        "fly": "command not available: 'fly'",
        "go 'Paris": "unclosed quote",
    }
    for line, text in cases.items():
        r = gobj_command(g, line)
        assert r["result"] < 0 and text in r["comment"], (line, r)
        assert r["comment"].startswith(g.short_name)
    assert calls == []


def test_wild_command_keeps_unknown_keys(gc):
    g = gobj_create("g", gc, {}, make_yuno())
    assert gobj_command(g, "anything Color=red x=1")["data"] == {"Color": "red", "x": "1"}


def test_kw_supplies_required_when_no_token(gc):
    g = gobj_create("g", gc, {}, make_yuno())
    assert gobj_command(g, "go", {"place": "Oslo"})["data"]["place"] == "Oslo"
