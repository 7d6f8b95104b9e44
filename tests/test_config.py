"""Configuration: strict parsing, errors that name file, line and key."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from smime_milter.config import ConfigError
from smime_milter.config.reader import Config, load_config, parse_config
from smime_milter.model import RevocationMode
from smime_milter.policy import Action
from smime_milter.release.rules import ReleaseRule
from tests.support.pki import TestPki

ROOT = Path(__file__).resolve().parents[1]


def test_example_policy_file_is_valid_and_matches_defaults() -> None:
    config = load_config(ROOT / "policy" / "smime-milter.toml")
    defaults = parse_config("")
    assert config.trust == defaults.trust
    assert config.verify == defaults.verify
    assert config.decrypt_keys == ()
    assert config.milter == defaults.milter
    assert config.store == defaults.store
    assert config.policy == defaults.policy
    assert config.jmap == defaults.jmap


def test_values_are_read(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[trust]\nanchors = ["ca.pem"]\nrevocation = "hard"\n'
        "[verify]\nallow_sha1 = true\nmin_rsa_bits = 3072\ncasefold_local_part = true\n"
        '[decrypt]\nkeys = ["/k/bob.pem"]\n'
    )
    config = load_config(path)
    assert config.trust.anchors == (tmp_path / "ca.pem",)
    assert config.verify.revocation is RevocationMode.HARD
    assert config.verify.algorithms.allow_sha1 is True
    assert config.verify.algorithms.min_rsa_bits == 3072
    assert config.verify.casefold_local_part is True
    assert [k.key for k in config.decrypt_keys] == [Path("/k/bob.pem")]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[verify]\nallow_sha1 = false\nallow_sha = true\n",
         "c.toml:3: verify.allow_sha: unknown key"),
        ("[verfy]\n", "c.toml:1: verfy: unknown section"),
        ('[trust]\n\nrevocation = "sometimes"\n',
         "c.toml:3: trust.revocation: invalid value 'sometimes'"),
        ('[verify]\nmin_rsa_bits = "2048"\n',
         "c.toml:2: verify.min_rsa_bits: expected int, got str"),
        ("[verify]\nmin_rsa_bits = 64\n", "c.toml:2: verify.min_rsa_bits: must be between"),
        ("[verify]\nallow_sha1 = 1\n", "c.toml:2: verify.allow_sha1: expected bool, got int"),
        ("[trust]\nanchors = [1]\n", "c.toml:2: trust.anchors: expected a list"),
        ("[trust\n", "c.toml: "),
        ('[milter]\nsocket = "tcp:25"\n', "c.toml:2: milter.socket: invalid value 'tcp:25'"),
        ('[milter]\nsocket = "inet:99999@localhost"\n', "c.toml:2: milter.socket: invalid"),
        ('[milter]\nsocket_mode = "rw"\n', "c.toml:2: milter.socket_mode: expected an octal"),
        ('[milter]\nmax_message_size = "big"\n', "c.toml:2: milter.max_message_size: not a size"),
        ("[milter]\nworkers = -1\n", "c.toml:2: milter.workers: must be between 0 and 256"),
        ('[milter]\nlog_level = "loud"\n', "c.toml:2: milter.log_level: invalid value"),
        ('[milter]\nauthserv_id = "a b"\n', "c.toml:2: milter.authserv_id: invalid value"),
        ('[milter]\nuser = ""\n', "c.toml:2: milter.user: must not be empty"),
        ('[store]\nmap_size = "64K"\n', "c.toml:2: store.map_size: must be at least 1M"),
        ('[store]\nmap_size = "2G"\nmax_map_size = "1G"\n',
         "c.toml:3: store.max_map_size: must not be smaller"),
        ('[store]\npathh = "x"\n', "c.toml:2: store.pathh: unknown key"),
        ('[store]\nretention_days = "30d"\n',
         "c.toml:2: store.retention_days: expected a number, got str"),
        ("[store]\n\nretention_days = -1\n",
         "c.toml:3: store.retention_days: must be between 0 and 36500"),
        ('[store]\nsync = "never"\n',
         "c.toml:2: store.sync: invalid value 'never' (allowed: \"commit\", \"interval\")"),
        ('[policy]\nfailed = "bounce"\n', "c.toml:2: policy.failed: invalid value 'bounce'"),
        ('[policy]\nerror = "tag"\n', "c.toml:2: policy.error: 'tag' is not possible here"),
        ('[policy]\noversize = "tag"\n', "c.toml:2: policy.oversize: 'tag' is not possible"),
        ('[policy]\nmonitor = "yes"\n', "c.toml:2: policy.monitor: expected bool"),
        ('[policy.domains."a.example"]\nfailed = "accept"\nfaild = "reject"\n',
         'c.toml:3: policy.domains."a.example".faild: unknown key'),
        ('[policy.domains."a.example"]\n\nfailed = "drop"\n',
         'c.toml:3: policy.domains."a.example".failed: invalid value'),
    ],
)
def test_errors_name_file_line_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(str(tmp_path / expected)), str(info.value)


_MANY_ERRORS = """\
[policy]
failed = "explode"

[milter]
bogus = 1
max_message_size = "lots"

[[release.rules]]
name = "r1"
releasers = ["legal.example"]
divert_to = "hold"
ports = [0]
"""

#: A bad policy action lists the allowed ones (an Enum choice, like revocation).
_ACTIONS = '(allowed: "accept", "tag", "quarantine", "tempfail", "reject")'


def test_every_error_is_reported_in_one_run(tmp_path: Path) -> None:
    """Errors of several sections come as one ConfigError, one line each, in
    line order (not section order); a bad value is no follow-on error (the
    rule's bad ports do not make it a rule without a selector)."""
    path = tmp_path / "c.toml"
    path.write_text(_MANY_ERRORS)
    expected = (
        f"{path}:2: policy.failed: invalid value 'explode' {_ACTIONS}",
        f"{path}:5: milter.bogus: unknown key",
        f"{path}:6: milter.max_message_size: not a size: 'lots'",
        f"{path}:12: release.rules[0].ports: expected a list of TCP ports (1-65535)",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == expected
    assert str(info.value) == "\n".join(expected)


def test_one_error_is_one_problem(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[verify]\nfoo = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == (f"{path}:2: verify.foo: unknown key",)
    assert str(info.value) == f"{path}:2: verify.foo: unknown key"


def test_a_section_that_is_not_a_table_is_skipped(tmp_path: Path) -> None:
    """An unusable section is one problem; the rest of the file is still read."""
    path = tmp_path / "c.toml"
    path.write_text('milter = 1\n[store]\nmap_size = "64K"\nmax_map_size = "32K"\n'
                    '[nosuch]\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == (
        f"{path}:1: milter: expected a table",
        f"{path}:3: store.map_size: must be at least 1M",
        # max_map_size < map_size depends on the bad map_size: not reported.
        f"{path}:5: nosuch: unknown section",
    )


def test_a_toml_syntax_error_is_the_only_error(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[milter]\nbogus = 1\n[trust\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith(f"{path}: ")


@pytest.mark.process
def test_check_config_prints_every_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(_MANY_ERRORS)
    result = subprocess.run(
        [sys.executable, "-m", "smime_milter.cli", "check-config", "--config", str(bad)],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"smime-milter: {bad}:2: policy.failed: invalid value 'explode' {_ACTIONS}",
        f"smime-milter: {bad}:5: milter.bogus: unknown key",
        f"smime-milter: {bad}:6: milter.max_message_size: not a size: 'lots'",
        f"smime-milter: {bad}:12: release.rules[0].ports: "
        "expected a list of TCP ports (1-65535)",
    ]
    assert result.stdout == ""


def test_a_failed_reload_logs_every_error(caplog: pytest.LogCaptureFixture) -> None:
    """The running daemon keeps its configuration and logs one complete
    record per problem (a multi-line record reads badly in syslog)."""
    import threading

    from smime_milter.mta.prefork import Supervisor

    def load() -> Config:
        raise ConfigError("c.toml:2: milter.bogus: unknown key", "c.toml:5: policy.x: unknown key")

    running = Config()
    supervisor = Supervisor(running, load, None, None, None, None,  # type: ignore[arg-type]
                            threading.Lock())
    with caplog.at_level("ERROR"):
        supervisor.reload()
    assert supervisor.config is running
    assert [r.getMessage() for r in caplog.records] == [
        "reload failed, keeping the running configuration: c.toml:2: milter.bogus: unknown key",
        "reload failed, keeping the running configuration: c.toml:5: policy.x: unknown key",
    ]


def test_daemon_sections_are_read(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[milter]\nsocket = "inet:8891@127.0.0.1"\nsocket_mode = "0600"\n'
        'authserv_id = "mx.example.org"\nmax_message_size = "10M"\nspool_threshold = 4096\n'
        'spool_directory = "spool"\nworkers = 2\nlog_level = "debug"\n'
        '[store]\npath = "st"\nmap_size = "16M"\nretention_days = 400\nsync = "commit"\n'
        '[policy]\nfailed = "quarantine"\nmonitor = true\ntag_subject = "[{status}] "\n'
        '[policy.domains."Strict.Example"]\nfailed = "reject"\nnone = "tag"\n'
    )
    config = load_config(path)
    milter = config.milter
    assert (milter.socket, milter.socket_mode, milter.authserv_id) == (
        "inet:8891@127.0.0.1", 0o600, "mx.example.org")
    assert (milter.max_message_size, milter.spool_threshold, milter.workers) == (
        10 << 20, 4096, 2)
    assert milter.spool_directory == tmp_path / "spool"
    assert config.store.path == tmp_path / "st"
    assert config.store.map_size == 16 << 20
    assert config.store.retention_days == 400
    assert Config().store.retention_days == 0  # records are kept unless asked
    assert config.store.sync == "commit"
    assert Config().store.sync == "interval"  # the daemon flushes once a second
    policy = config.policy
    assert policy.monitor is True and policy.tag_subject == "[{status}] "
    assert policy.actions.failed is Action.QUARANTINE
    strict = dict(policy.domains)["strict.example"]
    # A domain table overrides some outcomes and inherits the rest from [policy].
    assert (strict.failed, strict.none, strict.verified) == (
        Action.REJECT, Action.TAG, Action.ACCEPT)


@pytest.mark.process
def test_check_config_command(tmp_path: Path) -> None:
    good = subprocess.run(
        [sys.executable, "-m", "smime_milter.cli", "check-config", "--config",
         str(ROOT / "policy" / "smime-milter.toml")],
        capture_output=True, text=True, check=False,
    )
    assert good.returncode == 0, good.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[verify]\nfoo = 1\n")
    result = subprocess.run(
        [sys.executable, "-m", "smime_milter.cli", "check-config", "--config", str(bad)],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == f"smime-milter: {bad}:2: verify.foo: unknown key"
    assert result.stdout == ""


def test_jmap_and_anchor_directory(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[trust]\nanchor_directory = "mine"\n'
                    '[jmap]\ncache_lifetime = 600\nlisten = "unix:/run/x/jmap.sock"\n'
                    'listen_mode = "0600"\n')
    config = load_config(path)
    assert config.trust.anchor_directory == tmp_path / "mine"
    assert config.trust.all_anchors == config.trust.anchors  # missing: holds none
    (tmp_path / "mine").mkdir()
    assert config.trust.all_anchors == (*config.trust.anchors, tmp_path / "mine")
    assert (config.jmap.cache_lifetime, config.jmap.listen, config.jmap.listen_mode) == (
        600, "unix:/run/x/jmap.sock", 0o600)


@pytest.mark.parametrize(("text", "message"), [
    ("[jmap]\ncache_lifetime = 90000\n", r"c.toml:2: jmap.cache_lifetime: must be between"),
    ("[jmap]\ncache_lifetime = true\n", r"c.toml:2: jmap.cache_lifetime: expected a number"),
    ('[jmap]\nlisten = "inet:80"\n', r"c.toml:2: jmap.listen: invalid value"),
    ('[jmap]\nlisten_mode = "rw"\n', r"c.toml:2: jmap.listen_mode: expected an octal mode"),
    ('[jmap]\nlifetime = 5\n', r"c.toml:2: jmap.lifetime: unknown key"),
    ('[trust]\nanchor_directory = ""\n', r"c.toml:2: trust.anchor_directory: must not be"),
])
def test_jmap_errors_name_file_line_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


# --------------------------------------------------------------------------- [metrics]


def test_metrics_are_off_by_default_and_listen_on_loopback_or_a_unix_socket() -> None:
    assert parse_config("").metrics.listen is None
    for listen in ("unix:/run/smime-milter/metrics.sock", "inet:9101@127.0.0.1",
                   "inet:9101@localhost", "inet6:9101@::1"):
        assert parse_config(f'[metrics]\nlisten = "{listen}"\n').metrics.listen == listen
    remote = parse_config('[metrics]\nlisten = "inet:9101@192.0.2.7"\nallow_remote = true\n')
    assert (remote.metrics.listen, remote.metrics.allow_remote) == ("inet:9101@192.0.2.7", True)


@pytest.mark.parametrize(("listen", "message"), [
    ("inet:9101", r"c.toml:2: metrics.listen: not a loopback address.*allow_remote = true"),
    ("inet:9101@0.0.0.0", r"c.toml:2: metrics.listen: not a loopback address"),
    ("inet6:9101@2001:db8::1", r"c.toml:2: metrics.listen: not a loopback address"),
    ("inet:9101@metrics.example", r"c.toml:2: metrics.listen: not an IP address"),
    ("inet:70000@127.0.0.1", r"c.toml:2: metrics.listen: port out of range"),
    ("inet6:9101@127.0.0.1", r"c.toml:2: metrics.listen: inet6 needs an IPv6 address"),
    ("http://127.0.0.1:9101", r"c.toml:2: metrics.listen: expected unix:/path, inet:PORT@"),
])
def test_metrics_listen_errors_name_file_line_and_key(
    tmp_path: Path, listen: str, message: str
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f'[metrics]\nlisten = "{listen}"\n')
    with pytest.raises(ConfigError, match=message):
        load_config(path)


# --------------------------------------------------------------------------- [release]

RELEASE = """\
[release]
submit = "smtp:127.0.0.1:10025"

[[release.rules]]
name = "hq"
senders = ["Alice@Example.COM", "Example.MIL."]
recipient_domains = ["Allies.Example.", "nato.example"]
releasers = ["officer@example.com", "Releasers.Example.MIL"]
releaser_cas = ["cas.pem"]
required = 2
divert_to = "release-officers@example.org"

[[release.rules]]
name = "vault"
daemons = ["submission"]
ports = [587, 465]
releasers = ["keeper@vault.example.net"]
divert_to = "hold"
"""


def test_release_rules_are_read(tmp_path: Path, pki: TestPki) -> None:
    (tmp_path / "cas.pem").write_bytes(pki.root.cert_pem + pki.intermediate.cert_pem)
    path = tmp_path / "c.toml"
    path.write_text(RELEASE)
    release = load_config(path).release
    assert release.submit == "smtp:127.0.0.1:10025"
    hq, vault = release.rules
    assert hq == ReleaseRule(
        name="hq",
        releasers=("officer@example.com", "releasers.example.mil"),
        divert_to="release-officers@example.org",
        required=2,
        senders=("Alice@Example.COM", "example.mil"),
        recipient_domains=("allies.example", "nato.example"),
        releaser_cas=(hashlib.sha256(pki.root.cert_der).digest(),
                      hashlib.sha256(pki.intermediate.cert_der).digest()),
    )
    assert vault == ReleaseRule(
        name="vault", releasers=("keeper@vault.example.net",), divert_to="hold",
        daemons=("submission",), ports=(587, 465),
    )
    assert vault.holds and not hq.holds


def test_release_defaults() -> None:
    release = parse_config("").release
    assert release.rules == ()
    assert release.submit == "sendmail:/usr/sbin/sendmail"
    minimal = parse_config('[[release.rules]]\nall = true\nreleasers = ["example.mil"]\n'
                           'divert_to = "hold"\n').release.rules
    assert minimal == (ReleaseRule(name="rule1", releasers=("example.mil",),
                                   divert_to="hold", all=True),)


def _second_rule(old: str, new: str) -> str:
    """RELEASE with ``old`` replaced in the second [[release.rules]] block (line 14 on)."""
    start = RELEASE.rindex("[[release.rules]]")
    first, second = RELEASE[:start], RELEASE[start:]
    assert old in second, old
    return first + second.replace(old, new, 1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (RELEASE + 'colour = "red"\n', "c.toml:19: release.rules[1].colour: unknown key"),
        (_second_rule('releasers = ["keeper@vault.example.net"]\n', ""),
         "c.toml:13: release.rules[1].releasers: required"),
        (_second_rule('releasers = ["keeper@vault.example.net"]', "releasers = []"),
         "c.toml:17: release.rules[1].releasers: required"),
        (_second_rule('divert_to = "hold"\n', ""),
         "c.toml:13: release.rules[1].divert_to: required"),
        (_second_rule('"hold"', '"release officers"'),
         "c.toml:18: release.rules[1].divert_to: not an address or 'hold'"),
        (_second_rule('"hold"', '"<officers@example.org>"'),
         "c.toml:18: release.rules[1].divert_to: not an address"),
        (_second_rule('"hold"', '"HOLD"'), "c.toml:18: release.rules[1].divert_to: not an"),
        (_second_rule('"hold"', '"a@@example.org"'),
         "c.toml:18: release.rules[1].divert_to: not an address"),
        (RELEASE + "required = 0\n", "c.toml:19: release.rules[1].required: must be between"),
        (RELEASE + "required = 1.5\n", "c.toml:19: release.rules[1].required: expected an int"),
        (RELEASE + "required = true\n", "c.toml:19: release.rules[1].required: expected a num"),
        (RELEASE + 'required = "2"\n', "c.toml:19: release.rules[1].required: expected a num"),
        (_second_rule("ports = [587, 465]", 'all = true\nsenders = ["x.example"]'),
         "c.toml:16: release.rules[1].all: all = true applies to every message"),
        (_second_rule('daemons = ["submission"]\nports = [587, 465]\n', ""),
         "c.toml:13: release.rules[1]: a rule needs a selector"),
        (_second_rule('daemons = ["submission"]\nports = [587, 465]\n', "all = false\n"),
         "c.toml:13: release.rules[1]: a rule needs a selector"),
        (_second_rule('"vault"', '"hq"'), "c.toml:14: release.rules[1].name: rule name 'hq' is"),
        (_second_rule('"vault"', '"v a u l t"'), "c.toml:14: release.rules[1].name: use letters"),
        (_second_rule("[587, 465]", "[587, 0]"), "c.toml:16: release.rules[1].ports: expected a"),
        (_second_rule("[587, 465]", "[65536]"), "c.toml:16: release.rules[1].ports: expected a"),
        (_second_rule("[587, 465]", '["587"]'), "c.toml:16: release.rules[1].ports: expected a"),
        (_second_rule("[587, 465]", "587"), "c.toml:16: release.rules[1].ports: expected list"),
        (RELEASE + 'recipient_domains = ["exa mple"]\n',
         "c.toml:19: release.rules[1].recipient_domains: not a domain name: 'exa mple'"),
        (RELEASE + 'recipient_domains = ["ops@example.org"]\n',
         "c.toml:19: release.rules[1].recipient_domains: not a domain name"),
        (RELEASE + 'senders = ["under_score.example"]\n',
         "c.toml:19: release.rules[1].senders: not an address or domain"),
        (RELEASE + 'senders = ["alice@@example.com"]\n',
         "c.toml:19: release.rules[1].senders: not an address: 'alice@@example.com'"),
        (RELEASE + 'senders = ["alice@exa mple"]\n',
         "c.toml:19: release.rules[1].senders: not an address"),
        (_second_rule('"keeper@vault.example.net"', '"<keeper@vault.example.net>"'),
         "c.toml:17: release.rules[1].releasers: not an address"),
        (RELEASE + 'senders = [" "]\n', "c.toml:19: release.rules[1].senders: expected a list"),
        (RELEASE + 'releaser_cas = ["missing.pem"]\n',
         "c.toml:19: release.rules[1].releaser_cas: "),
        (RELEASE.replace("smtp:127.0.0.1:10025", "smtp:localhost"),
         "c.toml:2: release.submit: invalid value 'smtp:localhost'"),
        (RELEASE.replace("smtp:127.0.0.1:10025", "sendmail:sendmail"),
         "c.toml:2: release.submit: invalid value"),
        (RELEASE.replace("smtp:127.0.0.1:10025", "smtp:localhost:99999"),
         "c.toml:2: release.submit: invalid value"),
        (RELEASE.replace("smtp:127.0.0.1:10025", "lmtp:localhost:24"),
         "c.toml:2: release.submit: invalid value"),
        (RELEASE.replace("submit =", "sumbit ="), "c.toml:2: release.sumbit: unknown key"),
        ("[release]\nrules = [1]\n", "c.toml:2: release.rules: expected [[release.rules]]"),
    ],
)
def test_release_errors_name_file_line_and_key(
    tmp_path: Path, pki: TestPki, text: str, expected: str
) -> None:
    (tmp_path / "cas.pem").write_bytes(pki.intermediate.cert_pem)
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(str(tmp_path / expected)), str(info.value)


@pytest.mark.parametrize("content", [b"", b"not a certificate\n"], ids=["empty", "garbage"])
def test_release_unusable_releaser_cas_file(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "cas.pem").write_bytes(content)
    path = tmp_path / "c.toml"
    path.write_text(RELEASE)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{tmp_path / 'c.toml'}:9: release.rules[0].releaser_cas: ")


def test_release_unreadable_releaser_cas_file(tmp_path: Path, pki: TestPki) -> None:
    (tmp_path / "cas.pem").write_bytes(pki.intermediate.cert_pem)
    (tmp_path / "cas.pem").chmod(0)
    path = tmp_path / "c.toml"
    path.write_text(RELEASE)
    try:
        (tmp_path / "cas.pem").read_bytes()
    except PermissionError:
        pass
    else:
        pytest.skip("running as root: permissions do not stop reading")
    with pytest.raises(ConfigError, match=r"c\.toml:9: release\.rules\[0\]\.releaser_cas: "):
        load_config(path)


def test_release_cas_directory_without_certificates_is_an_error(
    tmp_path: Path, pki: TestPki
) -> None:
    """An empty releaser_cas would mean "any CA": it must not parse."""
    (tmp_path / "cas.pem").mkdir()
    path = tmp_path / "c.toml"
    path.write_text(RELEASE)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(
        f"{path}:9: release.rules[0].releaser_cas: no CA certificates found in"), str(info.value)
    (tmp_path / "cas.pem" / "ca.pem").write_bytes(pki.intermediate.cert_pem)
    [hq, _] = load_config(path).release.rules
    assert hq.releaser_cas == (hashlib.sha256(pki.intermediate.cert_der).digest(),)


def test_release_addresses_with_quoted_or_international_parts_are_accepted() -> None:
    text = ('[[release.rules]]\nsenders = [\'"a@b"@example.com\', "jörg@bücher.example"]\n'
            'releasers = ["officer@example.com"]\ndivert_to = "officers@xn--bcher-kva.example"\n')
    [rule] = parse_config(text).release.rules
    assert rule.senders == ('"a@b"@example.com', "jörg@bücher.example")


# --- check-config: suggestions, allowed values, missing files ---------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ('[trust]\nrevocaton = "soft"\n',
     'c.toml:2: trust.revocaton: unknown key; did you mean "revocation"?'),
    ('[policy]\n\ndomain = {}\n', 'c.toml:3: policy.domain: unknown key; did you mean "domains"?'),
    ('[policy.domains."a.example"]\nfaild = "reject"\n',
     'c.toml:2: policy.domains."a.example".faild: unknown key; did you mean "failed"?'),
    ('[[release.rules]]\nname = "r"\nall = true\ndivert_to = "hold"\n'
     'releasers = ["a.example"]\nreleaser_ca = []\n',
     'c.toml:6: release.rules[0].releaser_ca: unknown key; did you mean "releaser_cas"?'),
    ("[verfy]\n", 'c.toml:1: verfy: unknown section; did you mean "verify"?'),
    ("[verify]\nfoo = 1\n", "c.toml:2: verify.foo: unknown key"),  # nothing close
    ('[trust]\nrevocation = "sometimes"\n',
     "c.toml:2: trust.revocation: invalid value 'sometimes' "
     '(allowed: "off", "soft", "hard")'),
])
def test_a_typo_names_the_closest_key_and_a_bad_value_the_allowed_ones(
        tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == (str(tmp_path / expected),)


_FILE_KEYS = """\
[trust]
anchors = ["ca.pem", "here.pem", "anchors.d"]
intermediates = ["inter.pem"]
crls = ["crls"]
nss_module = "libnssckbi.so"

[decrypt]
keys = ["bob.pem"]

[advanced]
keys = "keys"
keys_password_file = "password"
addressbook = "book"
"""


def test_check_files_reports_every_missing_file_at_its_key(tmp_path: Path) -> None:
    """Every file a key names is looked for, relative to the configuration;
    each missing one is a problem at the line of its key, in one run. A file
    that exists is no problem."""
    path = tmp_path / "c.toml"
    path.write_text(_FILE_KEYS)
    (tmp_path / "here.pem").write_text("")
    (tmp_path / "anchors.d").mkdir()
    with pytest.raises(ConfigError) as info:
        load_config(path, check_files=True)
    assert info.value.problems == (
        f"{path}:2: trust.anchors: no such file: {tmp_path / 'ca.pem'}",
        f"{path}:3: trust.intermediates: no such file: {tmp_path / 'inter.pem'}",
        f"{path}:4: trust.crls: no such file: {tmp_path / 'crls'}",
        f"{path}:5: trust.nss_module: no such file: {tmp_path / 'libnssckbi.so'}",
        f"{path}:8: decrypt.keys: no such file: {tmp_path / 'bob.pem'}",
        f"{path}:11: advanced.keys: no such file: {tmp_path / 'keys'}",
        f"{path}:12: advanced.keys_password_file: no such file: {tmp_path / 'password'}",
        f"{path}:13: advanced.addressbook: no such file: {tmp_path / 'book'}",
    )
    # Without check_files the names are only read (the daemon loads them later).
    assert load_config(path).trust.anchors[0] == tmp_path / "ca.pem"


def test_a_missing_releaser_ca_is_always_a_problem_at_its_key(tmp_path: Path) -> None:
    """releaser_cas are read while the file is parsed: missing is missing."""
    path = tmp_path / "c.toml"
    path.write_text('[[release.rules]]\nname = "r"\nall = true\ndivert_to = "hold"\n'
                    'releasers = ["a.example"]\nreleaser_cas = ["cas.pem"]\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == (
        f"{path}:6: release.rules[0].releaser_cas: no such file: {tmp_path / 'cas.pem'}",)


_FIVE_MISTAKES = """\
[trust]
revocaton = "soft"
anchors = ["missing-ca.pem"]

[verify]
min_rsa_bits = "2048"

[policy]
failed = "explode"

[verfy]
allow_sha1 = true
"""


@pytest.mark.process
def test_check_config_reports_five_different_mistakes_in_one_run(tmp_path: Path) -> None:
    """The installed console script, as the systemd unit runs it before a start."""
    path = tmp_path / "smime-milter.toml"
    path.write_text(_FIVE_MISTAKES)
    result = subprocess.run(
        [str(Path(sys.executable).with_name("smime-milter")), "check-config", "--config",
         str(path)], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f'smime-milter: {path}:2: trust.revocaton: unknown key; did you mean "revocation"?',
        f"smime-milter: {path}:3: trust.anchors: no such file: {tmp_path / 'missing-ca.pem'}",
        f"smime-milter: {path}:6: verify.min_rsa_bits: expected int, got str",
        f"smime-milter: {path}:9: policy.failed: invalid value 'explode' {_ACTIONS}",
        f'smime-milter: {path}:11: verfy: unknown section; did you mean "verify"?',
    ]
