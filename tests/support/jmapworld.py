"""A store filled by really verifying messages, and a way to ask it JMAP questions.

The messages are signed with the standard test PKI (minted around
:data:`tests.support.verdicts.NOW`), verified by the real engine at the
delivery moment and stored as the milter stores them; then
``smime-milter jmap`` is run with a JMAP Request on stdin and a pretend
current time (``main``'s clock hook), so tests can move time past an expiry
or a revocation.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from smime_milter.cli.main import main
from smime_milter.store import Record, Store

from .clockedcli import clocked_command, fixed
from .pki import Identity, TestPki, make_ca, make_crl, make_leaf
from .smime import multipart_signed, opaque_signed, text_entity, wrap_message
from .verdicts import BODY, NOW, make_verifier

DELIVERED = NOW
USING = ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail",
         "urn:ietf:params:jmap:smimeverify"]
ACCOUNT = "a1"


@dataclass
class World:
    """The scenario: named records in a store, and the files to reconfigure it."""

    root: Path
    config: Path
    store: Path
    crl_dir: Path
    anchor_dir: Path
    pki: TestPki
    #: Name -> record id.
    ids: dict[str, str] = field(default_factory=dict)
    #: Identities used beyond the standard PKI.
    extra: dict[str, Identity] = field(default_factory=dict)

    def jmap(self, calls: list[list[Any]], *, now: datetime, using: list[str] | None = None,
             extra_args: tuple[str, ...] = ()) -> dict[str, Any]:
        """The Response to a Request of ``calls``, from ``smime-milter jmap``."""
        request = {"using": USING if using is None else using, "methodCalls": calls}
        return self.jmap_raw(json.dumps(request).encode(), now=now, extra_args=extra_args)

    def jmap_raw(self, body: bytes, *, now: datetime,
                 extra_args: tuple[str, ...] = ()) -> dict[str, Any]:
        out = io.StringIO()
        stdin = sys.stdin
        sys.stdin = io.TextIOWrapper(io.BytesIO(body))
        try:
            with redirect_stdout(out):
                code = main(["jmap", "--config", str(self.config), *extra_args],
                            clock=fixed(now))
        finally:
            sys.stdin = stdin
        response = json.loads(out.getvalue())
        response["_exit"] = code
        return response

    def jmap_process(self, calls: list[list[Any]], *, now: datetime) -> dict[str, Any]:
        """The same through a separate ``smime-milter jmap`` process."""
        request = json.dumps({"using": USING, "methodCalls": calls})
        done = subprocess.run(
            clocked_command(now, "jmap", "--config", str(self.config)),
            input=request.encode(), capture_output=True, check=True, timeout=60,
        )
        return json.loads(done.stdout)

    def get(self, names: list[str], properties: list[str] | None, *, now: datetime
            ) -> dict[str, dict[str, Any]]:
        """Email/get of the named records; the list keyed by name."""
        args: dict[str, Any] = {"accountId": ACCOUNT, "ids": [self.ids[n] for n in names]}
        if properties is not None:
            args["properties"] = properties
        response = self.jmap([["Email/get", args, "g"]], now=now)
        name, result, _ = response["methodResponses"][0]
        assert name == "Email/get", result
        by_id = {v: k for k, v in self.ids.items()}
        return {by_id[item["id"]]: item for item in result["list"]}

    def query(self, filter: dict[str, Any] | None, *, now: datetime,
              candidates: list[str] | None = None) -> set[str]:
        """Email/query: the names of the matching records."""
        args: dict[str, Any] = {"accountId": ACCOUNT, "filter": filter}
        if candidates is not None:
            args["candidateIds"] = candidates
        name, result, _ = self.jmap([["Email/query", args, "q"]], now=now)["methodResponses"][0]
        assert name == "Email/query", result
        by_id = {v: k for k, v in self.ids.items()}
        return {by_id.get(i, i) for i in result["ids"]}

    def changes(self, since: str, *, now: datetime, max_changes: int | None = None
                ) -> dict[str, Any]:
        args: dict[str, Any] = {"accountId": ACCOUNT, "sinceState": since}
        if max_changes is not None:
            args["maxChanges"] = max_changes
        return self.jmap([["Email/changes", args, "c"]], now=now)["methodResponses"][0][1]

    def state(self, *, now: datetime) -> str:
        response = self.jmap([["Email/get", {"accountId": ACCOUNT, "ids": [],
                                             "properties": ["smimeStatusAtDelivery"]}, "s"]],
                             now=now)
        return response["methodResponses"][0][1]["state"]

    def revoke_later(self, name: str, at: datetime) -> None:
        """Publishes a CRL (in the configured CRL directory) revoking ``name`` at ``at``."""
        crl = make_crl(self.pki.intermediate, [(self.extra[name].cert, at)],
                       this_update=at, next_update=at + timedelta(days=30), number=2)
        (self.crl_dir / "intermediate.crl").write_bytes(crl)


def build_world(root: Path, pki: TestPki) -> World:
    """Delivers the scenario's messages at :data:`DELIVERED` into a new store."""
    root.mkdir(parents=True, exist_ok=True)
    files = pki.write(root / "pki")
    world = World(root=root, config=root / "smime-milter.toml", store=root / "store",
                  crl_dir=root / "crls", anchor_dir=root / "anchors", pki=pki)
    world.crl_dir.mkdir()
    world.config.write_text(
        "[trust]\n"
        f'anchors = ["{files["root.pem"]}"]\n'
        f'crls = ["{world.crl_dir}"]\n'
        f'anchor_directory = "{world.anchor_dir}"\n'
        "[store]\n"
        f'path = "{world.store}"\n'
        "[jmap]\n"
        "cache_lifetime = 3600\n"
    )
    short = make_leaf(pki.intermediate, "short@example.com", now=NOW,
                      not_after=NOW + timedelta(days=2), key_label="jmap:short")
    late = make_leaf(pki.intermediate, "late@example.com", now=NOW, key_label="jmap:late")
    later_ca = make_ca("Later Root CA", now=NOW, key_label="jmap:later")
    newcomer = make_leaf(later_ca, "new@example.com", now=NOW, key_label="jmap:new")
    world.extra.update(short=short, late=late, later_ca=later_ca, newcomer=newcomer)
    entity = text_entity(BODY)
    signed = multipart_signed(entity, pki.rsa, signing_time=NOW)
    messages = {
        "alice": signed,
        "opaque": opaque_signed(entity, pki.ec256, from_addr="ec256@example.com",
                                signing_time=NOW),
        "tampered": signed.replace(b"this message is signed", b"this message is forged"),
        "mismatch": multipart_signed(entity, pki.rsa, from_addr="mallory@example.com",
                                     signing_time=NOW),
        "short": multipart_signed(entity, short, from_addr="short@example.com",
                                  signing_time=NOW),
        "late": multipart_signed(entity, late, from_addr="late@example.com", signing_time=NOW),
        "newcomer": multipart_signed(entity, newcomer, from_addr="new@example.com",
                                     signing_time=NOW),
        "plain": wrap_message(entity),
    }
    verifier = make_verifier(pki, clock=DELIVERED)
    with Store.open(world.store) as store:
        for number, (name, message) in enumerate(messages.items()):
            verdict = verifier.verify(message, at=DELIVERED)
            record_id = f"r{name}{number}"
            store.put_sync(Record.from_verdict(
                verdict, record_id=record_id, received_at=DELIVERED,
                envelope_sender="sender@example.com", envelope_recipients=("bob@example.com",),
                message_id=None, queue_id=None,
            ))
            world.ids[name] = record_id
    return world
