"""Hostile review of workspaces, lineage and ``kdelta export``/``import``: what an
adversary (a tenant choosing names, a lying peer, a crafted file) tried, and what must
hold."""

from __future__ import annotations

import random
from typing import Any

import pytest

import koru
from conftest import StepClock
from koru import workspace_namespace

D = 4


def db_open() -> Any:
    return koru.open(":memory:", difficulty=D, clock=StepClock(), sync="os")


@pytest.mark.parametrize("name", ["t*", "*", "te?m"])
async def test_a_grant_on_a_workspace_named_with_a_wildcard_reaches_no_other(name: str) -> None:
    """Attack: a tenant picks the workspace name ``t*`` (or ``*``); its operator grants
    it ``workspace_namespace(name)``, as the docs say to. Globs have no escape, so that
    grant read every workspace starting with ``t`` (``team``'s secrets). What must
    hold: the helper never gives a glob wider than the workspace it names (it refuses
    such a name), and no handle of the tenant reads ``team``."""
    alice = koru.Identity.mine(D, rng=random.Random(1))
    async with db_open() as db:
        await db.register(alice)
        await db.workspace("team").put("docs", "plan", "secret")
        try:
            glob = workspace_namespace(name)
        except koru.InvalidDataError:
            return  # refused: no grant can be made this way
        await db.grant(alice, namespace=glob, actions="read,write,admin")
        with pytest.raises(koru.PermissionDeniedError):
            await db.as_identity(alice).workspace("team").get("docs", "plan")
