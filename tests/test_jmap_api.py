"""The Python API a JMAP server embeds: ``SmimeJmap`` and ``capabilities``.

The JSON protocol is tested through ``smime-milter jmap`` in
``test_jmap_command.py``; this covers what only the API exposes.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from smime_milter.bootstrap import open_jmap
from smime_milter.config.reader import load_config
from smime_milter.jmap.methods import SMIMEVERIFY, capabilities
from smime_milter.model import Status
from smime_milter.store import CannotCalculateChanges, Store, StoreError
from tests.support.jmapworld import DELIVERED, World, build_world
from tests.support.pki import TestPki


@pytest.fixture
def world(tmp_path: Path, pki: TestPki) -> World:
    return build_world(tmp_path / "world", pki)


def test_capabilities_are_empty_objects() -> None:
    assert capabilities() == {"capabilities": {SMIMEVERIFY: {}},
                              "accountCapabilities": {SMIMEVERIFY: {}}}
    assert SMIMEVERIFY == "urn:ietf:params:jmap:smimeverify"


@pytest.mark.parametrize("few", [0, 10_000], ids=["scan of stale", "read each"])
def test_both_ways_of_finding_stale_candidates_agree(world: World, few: int) -> None:
    now = DELIVERED + timedelta(days=3)
    with open_jmap(load_config(world.config), clock=lambda: now) as api:
        api.few_candidates = few
        ids = list(world.ids.values())
        matched = api.email_query({"hasVerifiedSmime": True}, ids)
        names = {name for name, record_id in world.ids.items() if record_id in matched}
        assert names == {"alice", "opaque", "late"}
        views = api.store.views(ids)
    assert views[world.ids["short"]].status is Status.SIGNED_FAILED
    assert all(v.verified_at == now for v in views.values() if v.revalidatable)


def test_get_query_changes_through_the_api(world: World) -> None:
    with open_jmap(load_config(world.config), clock=lambda: DELIVERED) as api:
        result = api.email_get([world.ids["alice"], "rnothere"], ["smimeStatusAtDelivery"])
        assert result.found == ({"id": world.ids["alice"],
                                 "smimeStatusAtDelivery": "signed/verified"},)
        assert result.not_found == ("rnothere",) and result.state == "8"
        assert api.email_query({"hasSmime": False}) == [world.ids["plain"]]
        assert len(api.email_changes("0").created) == 8
        with pytest.raises(CannotCalculateChanges):
            api.email_changes("9")
        with pytest.raises(ValueError, match="unknown properties: subject"):
            api.email_get([], ["subject"])


def test_read_only_api_does_not_write(world: World) -> None:
    now = DELIVERED + timedelta(days=3)
    with open_jmap(load_config(world.config), readonly=True, clock=lambda: now) as api:
        got = api.email_get([world.ids["short"]], ["smimeStatus"]).found
        assert got == ({"id": world.ids["short"], "smimeStatus": "signed/failed"},)
        assert api.email_query({"hasVerifiedSmime": False}, [world.ids["short"]]) == [
            world.ids["short"]]
    with Store.open(world.store, readonly=True) as store:
        assert store.get(world.ids["short"]).status is Status.SIGNED_VERIFIED


def test_open_jmap_refuses_a_store_that_does_not_exist(world: World, tmp_path: Path) -> None:
    """An embedding JMAP server with a mistyped store.path must not answer
    every id notFound from a new empty store."""
    typo = tmp_path / "typo"
    config = load_config(world.config)
    config = replace(config, store=replace(config.store, path=typo))
    for readonly in (False, True):
        with pytest.raises(StoreError, match=f"no store at {typo}") as raised:
            open_jmap(config, readonly=readonly)
        assert raised.value.reason == "missing"
    assert not typo.exists()
