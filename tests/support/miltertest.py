"""Drive a milter with OpenDKIM's ``miltertest(8)``: the MTA side of the milter
protocol as a generated Lua script, the filter's end-of-message requests as
parsed Python values.

miltertest has no way to list what a filter asked for at end of message; it
only answers questions (``mt.eom_check``) and returns the values of added or
inserted fields (``mt.getheader``). The generated script therefore asks every
question a test may care about for every field name the message carries plus
our own two, and prints the answers as hex-encoded, machine-readable lines.

Known miltertest limitations worked around here (OpenDKIM 2.11, ``miltertest.c``):

* ``mt.eom_check(conn, MT_HDRCHANGE, name, value, index)`` reads the index from
  the *value* argument (``lua_tonumber(l, 4)``), so it never matches a real
  index. ``MT_HDRDELETE`` (a change to the empty value, which is how
  ``smfi_chgheader(ctx, name, index, NULL/"")`` deletes) checks the index
  correctly and is used for deletions.
* ``MT_SMTPREPLY`` only matches code, enhanced code *and* text together.
* ``mt.getheader`` walks the requests newest first, so with several inserted
  fields of one name, instance 0 is the last one requested.
* ``mt.bodyfile`` sends 65536-byte chunks, one byte more than libmilter's
  MILTER_MAX_DATA_SIZE, and libmilter drops the connection; bodies are
  therefore written as several files of at most 65535 bytes.
* replies and requests are read into 1024-byte buffers: a field value near
  that size would overrun miltertest itself.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import activity

MILTERTEST = shutil.which("miltertest")
MILTERTEST_MISSING = "miltertest (Debian/Ubuntu package 'miltertest') is not installed"

#: Milter reply codes (libmilter/mfdef.h SMFIR_*) as the letters miltertest reports.
CONTINUE = "c"
ACCEPT = "a"
REJECT = "r"
TEMPFAIL = "t"
DISCARD = "d"
REPLYCODE = "y"

_MARK = "@@"
#: MILTER_CHUNK_SIZE: the largest body chunk an MTA sends (and libmilter accepts).
CHUNK_SIZE = 65535


def lua_string(text: str | bytes) -> str:
    """A Lua string literal for any bytes (decimal escapes, so nothing is lost)."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    out = []
    for byte in data:
        char = chr(byte)
        if 0x20 <= byte < 0x7F and char not in '"\\':
            out.append(char)
        else:
            out.append(f"\\{byte:03d}")
    return '"' + "".join(out) + '"'


@dataclass(frozen=True, slots=True)
class Message:
    """One SMTP transaction: envelope, header fields as libmilter passes them, body."""

    sender: str
    recipients: tuple[str, ...]
    headers: tuple[tuple[str, str], ...]
    body: bytes
    #: SMFIC_MAIL macros (e.g. ``{"i": "QUEUEID"}``).
    mail_macros: Mapping[str, str] = field(default_factory=dict)
    #: Send SMFIC_ABORT (SMTP RSET) after the body instead of end of message.
    abort: bool = False
    #: Extra yes/no questions: label -> Lua expression over ``conn`` after eom.
    checks: Mapping[str, str] = field(default_factory=dict)


def split_message(data: bytes) -> tuple[tuple[tuple[str, str], ...], bytes]:
    """Header fields and body of a CRLF message, the way an MTA hands them to a
    milter: value without the space after the colon, folded lines joined by LF."""
    head, _, body = data.partition(b"\r\n\r\n")
    fields: list[list[str]] = []
    for line in head.decode("utf-8", "surrogateescape").split("\r\n"):
        if line[:1] in (" ", "\t") and fields:
            fields[-1][1] += "\n" + line
            continue
        name, _, value = line.partition(":")
        fields.append([name, value[1:] if value.startswith(" ") else value])
    return tuple((name, value) for name, value in fields), body


def message(data: bytes, sender: str, recipients: Iterable[str], *, queue_id: str | None = None,
            abort: bool = False, checks: Mapping[str, str] | None = None) -> Message:
    """A :class:`Message` from the bytes of an RFC 5322 message."""
    headers, body = split_message(data)
    return Message(sender, tuple(recipients), headers, body,
                   {"i": queue_id} if queue_id else {}, abort, dict(checks or {}))


# -- questions for ``Message.checks`` -------------------------------------------------


def smtp_reply_is(code: str, xcode: str, text: str) -> str:
    """Lua: the filter set exactly this SMTP reply (smfi_setreply)."""
    return (f"mt.eom_check(conn, MT_SMTPREPLY, {lua_string(code)}, {lua_string(xcode)}, "
            f"{lua_string(text)})")


def quarantined_with(reason: str) -> str:
    """Lua: the filter quarantined the message with exactly this reason."""
    return f"mt.eom_check(conn, MT_QUARANTINE, {lua_string(reason)})"


def header_changed_to(name: str, value: str) -> str:
    """Lua: some ``name`` field was changed to exactly ``value`` (any index)."""
    return f"mt.eom_check(conn, MT_HDRCHANGE, {lua_string(name)}, {lua_string(value)})"


# -- results --------------------------------------------------------------------------


@dataclass(slots=True)
class EomResult:
    """What the filter did at end of one message, as far as miltertest can tell."""

    #: The final reply letter (see CONTINUE, ACCEPT, REPLYCODE, ...).
    reply: str = ""
    #: Inserted fields (smfi_insheader): name -> [(index, value)], lowest index first.
    inserted: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    #: Appended fields (smfi_addheader): name -> values.
    added: dict[str, list[str]] = field(default_factory=dict)
    #: Deleted fields (smfi_chgheader to ""): (name as sent, 1-based index).
    deleted: set[tuple[str, int]] = field(default_factory=set)
    #: Names with any smfi_chgheader request (deletions included).
    changed: set[str] = field(default_factory=set)
    any_change: bool = False
    any_insert: bool = False
    any_add: bool = False
    quarantined: bool = False
    checks: dict[str, bool] = field(default_factory=dict)

    def value(self, name: str) -> str:
        """The one inserted ``name`` field's value (asserts there is exactly one)."""
        found = self.inserted.get(name, [])
        assert len(found) == 1, f"{len(found)} inserted {name} fields: {found}"
        return found[0][1]

    def index(self, name: str) -> int:
        """Where the one inserted ``name`` field went (0: the very top)."""
        found = self.inserted.get(name, [])
        assert len(found) == 1, f"{len(found)} inserted {name} fields: {found}"
        return found[0][0]


class MiltertestError(RuntimeError):
    """miltertest failed (Lua error, protocol error, timeout)."""


_PRELUDE = r"""
local function hex(s)
  return (tostring(s):gsub(".", function(c) return string.format("%02x", c:byte()) end))
end
local function emit(n, kind, ...)
  local parts = {"@@", tostring(n), kind}
  for _, v in ipairs({...}) do parts[#parts + 1] = hex(v) end
  print(table.concat(parts, " "))
end
local function ok(err, what)
  if err ~= nil then error(what .. ": " .. tostring(err)) end
end
local function step(conn, err, what)
  ok(err, what)
  local reply = mt.getreply(conn)
  if reply ~= SMFIR_CONTINUE then
    error(what .. ": reply " .. string.char(math.floor(reply)))
  end
end
local function report(conn, n, names, maxindex, checks)
  emit(n, "reply", string.char(math.floor(mt.getreply(conn))))
  emit(n, "any", tostring(mt.eom_check(conn, MT_HDRCHANGE)),
       tostring(mt.eom_check(conn, MT_HDRINSERT)), tostring(mt.eom_check(conn, MT_HDRADD)))
  emit(n, "quarantine", tostring(mt.eom_check(conn, MT_QUARANTINE)))
  for _, name in ipairs(names) do
    if mt.eom_check(conn, MT_HDRCHANGE, name) then emit(n, "changed", name) end
    for i = 1, maxindex do
      if mt.eom_check(conn, MT_HDRDELETE, name, i) then emit(n, "deleted", name, i) end
    end
    local k = 0
    while true do
      local v = mt.getheader(conn, name, k)
      if v == nil then break end
      local where = "add"
      for i = 0, maxindex do
        if mt.eom_check(conn, MT_HDRINSERT, name, v, i) then where = tostring(i) break end
      end
      emit(n, "header", name, where, v)
      k = k + 1
    end
  end
  for label, expr in pairs(checks) do emit(n, "check", label, tostring(expr())) end
end
"""


def _names(messages: Sequence[Message], extra: Iterable[str]) -> list[str]:
    names: dict[str, None] = {}
    for msg in messages:
        for name, _ in msg.headers:
            names[name] = None
    for name in extra:
        names[name] = None
    return list(names)


def build_script(socket: str, messages: Sequence[Message], workdir: Path, *,
                 connect_macros: Mapping[str, str] | None = None,
                 client: tuple[str, str] = ("client.example", "192.0.2.25"),
                 helo: str = "client.example",
                 probe_names: Iterable[str] = ()) -> str:
    """The Lua script for one connection carrying ``messages`` in turn."""
    names = _names(messages, probe_names)
    maxindex = max((len(m.headers) for m in messages), default=0) + 2
    lines = [_PRELUDE,
             "local function main()",
             f"local names = {{{', '.join(lua_string(n) for n in names)}}}",
             "mt.set_timeout(30)",
             f"local conn = mt.connect({lua_string(socket)}, 50, 0.1)",
             'if conn == nil then error("mt.connect() failed") end']
    if connect_macros:
        pairs = ", ".join(f"{lua_string(k)}, {lua_string(v)}" for k, v in connect_macros.items())
        lines.append(f"ok(mt.macro(conn, SMFIC_CONNECT, {pairs}), 'macro')")
    lines.append(f"step(conn, mt.conninfo(conn, {lua_string(client[0])}, "
                 f"{lua_string(client[1])}), 'conninfo')")
    # pymilter filters without a hello() callback negotiate SMFIP_NOHELO.
    lines.append(f"if not mt.test_option(conn, SMFIP_NOHELO) then "
                 f"step(conn, mt.helo(conn, {lua_string(helo)}), 'helo') end")
    for n, msg in enumerate(messages):
        if msg.mail_macros:
            pairs = ", ".join(f"{lua_string(k)}, {lua_string(v)}"
                              for k, v in msg.mail_macros.items())
            lines.append(f"ok(mt.macro(conn, SMFIC_MAIL, {pairs}), 'macro')")
        lines.append(f"step(conn, mt.mailfrom(conn, {lua_string('<' + msg.sender + '>')}), "
                     "'mailfrom')")
        for rcpt in msg.recipients:
            lines.append(f"step(conn, mt.rcptto(conn, {lua_string('<' + rcpt + '>')}), 'rcptto')")
        for name, value in msg.headers:
            lines.append(f"step(conn, mt.header(conn, {lua_string(name)}, {lua_string(value)}), "
                         "'header')")
        lines.append("step(conn, mt.eoh(conn), 'eoh')")
        # One file per chunk: bodyfile sends a file in 65536-byte chunks, one more than
        # libmilter accepts (it drops the connection), so no file may reach that size.
        for k in range(0, max(len(msg.body), 1), CHUNK_SIZE):
            body_path = workdir / f"body{n}-{k // CHUNK_SIZE}.bin"
            body_path.write_bytes(msg.body[k:k + CHUNK_SIZE])
            lines.append(f"step(conn, mt.bodyfile(conn, {lua_string(str(body_path))}), 'body')")
        if msg.abort:
            lines.append("ok(mt.abort(conn), 'abort')")
            continue
        lines.append("ok(mt.eom(conn), 'eom')")
        checks = ", ".join(f"[{lua_string(label)}] = function() return {expr} end"
                           for label, expr in msg.checks.items())
        lines.append(f"report(conn, {n}, names, {maxindex}, {{{checks}}})")
    lines.append("mt.disconnect(conn)")
    # miltertest exits 1 without a word on a Lua error: report it ourselves.
    lines += ["end",
              "local done, err = pcall(main)",
              'if not done then print("@@ERROR " .. tostring(err)) os.exit(3) end']
    return "\n".join(lines) + "\n"


def parse_output(stdout: str) -> dict[int, EomResult]:
    """The report lines of a script's stdout, by message number."""
    results: dict[int, EomResult] = {}
    for line in stdout.splitlines():
        if not line.startswith(_MARK + " "):
            continue
        _, number, kind, *raw = line.split(" ")
        values = [bytes.fromhex(v).decode("utf-8", "surrogateescape") for v in raw]
        result = results.setdefault(int(number), EomResult())
        if kind == "reply":
            result.reply = values[0]
        elif kind == "any":
            result.any_change, result.any_insert, result.any_add = (v == "true" for v in values)
        elif kind == "quarantine":
            result.quarantined = values[0] == "true"
        elif kind == "changed":
            result.changed.add(values[0])
        elif kind == "deleted":
            result.deleted.add((values[0], int(values[1])))
        elif kind == "header":
            name, where, value = values
            if where == "add":
                result.added.setdefault(name, []).append(value)
            else:
                result.inserted.setdefault(name, []).append((int(where), value))
                result.inserted[name].sort()
        elif kind == "check":
            result.checks[values[0]] = values[1] == "true"
    return results


def run_session(socket: str, messages: Sequence[Message], workdir: Path, *,
                connect_macros: Mapping[str, str] | None = None,
                client: tuple[str, str] = ("client.example", "192.0.2.25"),
                probe_names: Iterable[str] = (), timeout: float = 60.0) -> list[EomResult]:
    """Run one connection through miltertest; one result per message that
    reached end of message (aborted ones have none), in order."""
    if MILTERTEST is None:
        raise MiltertestError(MILTERTEST_MISSING)
    activity.note("miltertest")
    workdir.mkdir(parents=True, exist_ok=True)
    script = workdir / "session.lua"
    script.write_text(build_script(socket, messages, workdir, connect_macros=connect_macros,
                                   client=client, probe_names=probe_names))
    done = subprocess.run([MILTERTEST, "-s", str(script)], capture_output=True, text=True,
                          timeout=timeout, check=False)
    if done.returncode != 0:
        raise MiltertestError(f"miltertest exit {done.returncode}\nstdout:\n{done.stdout}\n"
                              f"stderr:\n{done.stderr}\nscript: {script}")
    results = parse_output(done.stdout)
    expected = [n for n, msg in enumerate(messages) if not msg.abort]
    if sorted(results) != expected:
        raise MiltertestError(f"reports for {sorted(results)}, expected {expected}:\n"
                              f"{done.stdout}\n{done.stderr}")
    return [results[n] for n in expected]
