"""Command lines and their one answer shape.

A line is ``name [positional ...] key=value key='quoted value' ...``. Names and
keys match case-insensitively, aliases included. The leading REQUIRED
parameters of a command's table are positional. An unknown key is an error
unless the command is wild. Every answer is
``{"result": int, "comment": str, "schema": ..., "data": ...}``; a negative
result is an error and its comment says what went wrong.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gobj.attrs import DTP, SDF, AttrError, SData, coerce

if TYPE_CHECKING:
    from gobj.runtime import GObj

__all__ = [
    "CommandError",
    "build_command_response",
    "format_command_line",
    "gobj_command",
    "gobj_stats",
    "split_command_line",
    "tokenize",
]


class CommandError(ValueError):
    """A line that cannot be parsed or does not fit the command's table."""


def build_command_response(result: int, comment: str = "", schema: Any = None,
                           data: Any = None) -> dict[str, Any]:
    if result != 0 and not comment:
        comment = "(see log)"
    return {"result": int(result), "comment": comment, "schema": schema, "data": data}


def tokenize(line: str) -> list[str]:
    """Split on blanks; a quote opens a span (also after ``key=``) closed by the same quote.

    Quotes are removed; ``key='a b'`` becomes ``key=a b``. An unclosed quote is
    an error naming its position.
    """
    tokens: list[str] = []
    buf: list[str] = []
    in_token = False
    i, n = 0, len(line)
    while i < n:
        ch = line[i]
        if ch in " \t\r\n":
            if in_token:
                tokens.append("".join(buf))
                buf, in_token = [], False
            i += 1
            continue
        in_token = True
        if ch in "'\"":
            end = line.find(ch, i + 1)
            if end < 0:
                raise CommandError(f"unclosed quote {ch} at position {i}")
            buf.append(line[i + 1:end])
            i = end + 1
            continue
        buf.append(ch)
        i += 1
    if in_token:
        tokens.append("".join(buf))
    return tokens


def _quote(value: str) -> str:
    if value and not any(c in value for c in " \t\r\n'\"=;"):
        return value
    quote = "'" if "'" not in value else '"'
    if quote in value:
        raise CommandError("a value cannot hold both quote characters")
    return f"{quote}{value}{quote}"


def format_command_line(name: str, positional: list[str] | None = None,
                        kw: dict[str, str] | None = None) -> str:
    """The inverse of parsing: a line that reads back into the same parts."""
    parts = [name]
    parts += [_quote(v) for v in positional or []]
    parts += [f"{k}={_quote(v)}" for k, v in (kw or {}).items()]
    return " ".join(parts)


def split_command_line(line: str) -> tuple[str, list[str], dict[str, str]]:
    """Name, positional tokens, and key=value pairs (keys as typed)."""
    line = line.strip(" \t\r\n")
    if not line:
        raise CommandError("empty command line")
    # A positional value may itself hold '=' only when quoted, so look at the
    # raw text of each token to tell positional from key=value.
    raw = _raw_tokens(line)
    tokens = tokenize(line)
    name = tokens[0]
    positional: list[str] = []
    pairs: dict[str, str] = {}
    for raw_tok, tok in zip(raw[1:], tokens[1:]):
        eq = raw_tok.find("=")
        quote = min((p for p in (raw_tok.find("'"), raw_tok.find('"')) if p >= 0), default=-1)
        if eq > 0 and (quote < 0 or eq < quote):
            key, _, value = tok.partition("=")
            pairs[key.strip()] = value
        else:
            if pairs:
                raise CommandError(f"positional value {tok!r} after key=value pairs")
            positional.append(tok)
    return name, positional, pairs


def _raw_tokens(line: str) -> list[str]:
    """Tokens with their quotes kept (same splitting rule as tokenize)."""
    out: list[str] = []
    i, n = 0, len(line)
    start = -1
    while i < n:
        ch = line[i]
        if ch in " \t\r\n":
            if start >= 0:
                out.append(line[start:i])
                start = -1
            i += 1
            continue
        if start < 0:
            start = i
        if ch in "'\"":
            end = line.find(ch, i + 1)
            if end < 0:
                raise CommandError(f"unclosed quote {ch} at position {i}")
            i = end + 1
            continue
        i += 1
    if start >= 0:
        out.append(line[start:])
    return out


def _param_index(params: list[SData]) -> dict[str, SData]:
    index: dict[str, SData] = {}
    for p in params:
        index[p.name.lower()] = p
        for alias in p.aliases:
            index[alias.lower()] = p
    return index


def _convert(param: SData, value: Any, cmd: str) -> Any:
    try:
        return coerce(param.type, value, param.name)
    except AttrError as exc:
        raise CommandError(f"command '{cmd}', parameter '{param.name}': {exc}") from None


def parse_command(cmd_name: str, params: list[SData], wild: bool, positional: list[str],
                  pairs: dict[str, str], kw: dict[str, Any]) -> dict[str, Any]:
    """Build the handler's kw from a command table (see module docstring)."""
    out: dict[str, Any] = {}
    leading = []
    for p in params:
        if p.flag & SDF.NOTACCESS:
            continue
        if not p.flag & SDF.REQUIRED:
            break
        leading.append(p)
    pos = list(positional)
    index = _param_index(params)
    for key, value in pairs.items():
        param = index.get(key.lower())
        if param is None:
            if not wild:
                raise CommandError(f"'{cmd_name}' command has no option '{key}'")
            out[key] = value
            continue
        out[param.name] = _convert(param, value, cmd_name)
    for p in leading:
        if p.name in out:
            continue
        if pos:
            out[p.name] = _convert(p, pos.pop(0), cmd_name)
        elif p.name in kw:
            out[p.name] = _convert(p, kw[p.name], cmd_name)
        else:
            raise CommandError(f"command '{cmd_name}', parameter '{p.name}' is required")
    if pos:
        raise CommandError(f"command '{cmd_name}' with extra parameters: {' '.join(pos)!r}")
    for p in params:
        if p.name in out:
            continue
        if p.name in kw:
            out[p.name] = _convert(p, kw[p.name], cmd_name)
        elif p.default is not None:
            out[p.name] = _convert(p, p.default, cmd_name)
    for key, value in kw.items():
        out.setdefault(key, value)
    return out


def gobj_command(gobj: GObj, line: str, kw: dict[str, Any] | None = None,
                 src: GObj | None = None) -> dict[str, Any] | None:
    """Run a command line on gobj. Returns the answer, or None when the answer
    will come later as an event (a command relayed to other processes)."""
    if gobj.destroying or gobj.destroyed:
        return build_command_response(-1, f"{gobj.short_name}: gobj is being destroyed")
    kw = dict(kw or {})
    parser = gobj.gclass.methods.get("mt_command_parser")
    if parser is not None:
        return parser(gobj, line, kw, src)
    try:
        name, positional, pairs = split_command_line(line)
    except CommandError as exc:
        return build_command_response(-1, f"{gobj.short_name}: {exc}")
    cmd = gobj.gclass.find_command(name)
    if cmd is None and name.lower() in ("help", "h", "?"):
        return _generic_help(gobj)
    if cmd is None:
        if not gobj.gclass.commands:
            return build_command_response(-1, f"{gobj.short_name}: no command table")
        return build_command_response(
            -1, f"{gobj.short_name}: command not available: '{name}'. Try 'help' command.")
    try:
        kw_cmd = parse_command(cmd.name, list(cmd.params), cmd.wild, positional, pairs, kw)
    except CommandError as exc:
        return build_command_response(-1, f"{gobj.short_name}: {exc}")
    if cmd.handler is None:
        from gobj.runtime import gobj_send_event

        event = (cmd.aliases[0] if cmd.aliases else cmd.name)
        gobj_send_event(gobj, event, kw_cmd, src)
        return None
    return cmd.handler(gobj, cmd.name, kw_cmd, src)


def _generic_help(gobj: GObj) -> dict[str, Any]:
    """``help`` for a gclass whose table does not define its own."""
    lines = [f"Commands of {gobj.short_name}", "=" * 40]
    rows = []
    for c in gobj.gclass.commands:
        params = " ".join(("<%s>" if p.flag & SDF.REQUIRED else "[%s=]") % p.name
                          for p in c.params)
        lines.append(f"- {', '.join([c.name, *c.aliases])} {params}".rstrip()
                     + f"  {c.description}")
        rows.append({"command": c.name, "aliases": list(c.aliases),
                     "description": c.description})
    return build_command_response(0, "\n".join(lines), None, rows)


def gobj_stats(gobj: GObj, stats: str = "", kw: dict[str, Any] | None = None,
               src: GObj | None = None) -> dict[str, Any]:
    """Numeric/string STATS/RSTATS/PSTATS attrs and free-form counters, filtered by
    ``stats`` (substring); ``__reset__`` resets the RSTATS first. Follows the bottom chain."""
    from gobj.runtime import gobj_reset_rstats

    mt = gobj.gclass.methods.get("mt_stats")
    if mt is not None:
        return mt(gobj, stats, kw or {}, src)
    if stats == "__reset__":
        node: GObj | None = gobj
        while node is not None:
            gobj_reset_rstats(node)
            node = node.bottom
        stats = ""
    data: dict[str, Any] = {}
    node = gobj
    while node is not None:
        for i, row in enumerate(node.gclass.attrs.values()):
            if not row.flag & (SDF.STATS | SDF.RSTATS | SDF.PSTATS):
                continue
            if stats and stats not in row.name:
                continue
            value = node._av[i]
            if row.type is DTP.BOOLEAN:
                value = int(value)
            if isinstance(value, (int, float, str)):
                data.setdefault(row.name, value)
        for key, value in (node.stats or {}).items():
            if not stats or stats in key:
                data.setdefault(key, value)
        node = node.bottom
    return build_command_response(0, "", None, data)
