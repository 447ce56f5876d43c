"""Which grants take effect (``koru.projections.Evaluator`` over ``AuthState``): roots
and owners, delegation chains that may only narrow, depth limits, revocations (who may
revoke, from when), time windows, cycles, bounded work, and the same answers whatever
order the statements were folded in."""

from __future__ import annotations

import random
from collections.abc import Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st

import koru
from koru.events import (
    IDENTITY,
    READ,
    WRITE,
    Event,
    Grant,
    GrantEvent,
    IdentityEvent,
    Revocation,
    RevokeEvent,
)
from koru.projections import MAX_DEPTH, AuthState, Evaluator, escalation

T = 1_767_225_600 * 10**9  # 2026-01-01
HOUR = 3600 * 10**9


def ident(seed: int) -> koru.Identity:
    return koru.Identity.mine(0, rng=random.Random(seed))


NODE, OWNER, A, B, C = (ident(i) for i in range(5))


def grant(
    granter: koru.Identity,
    grantee: koru.Identity,
    namespace: str = "*",
    key: str = "*",
    actions: str = "read",
    *,
    parent: Grant | None = None,
    not_before: int = 0,
    expires: int | None = None,
) -> Grant:
    return Grant.create(
        granter,
        grantee.public_key,
        namespace=namespace,
        key=key,
        actions=actions,
        not_before=not_before,
        expires=expires,
        parent=None if parent is None else parent.id,
    )


def revoke(revoker: koru.Identity, what: Grant, at: int) -> Revocation:
    return Revocation.create(revoker, what.id, at)


def event(statement: Grant | Revocation, seq: int = 1) -> Event:
    header = (b"o" * 16, IDENTITY, seq, None if seq == 1 else b"p" * 32, T)
    if isinstance(statement, Grant):
        return GrantEvent(*header, statement)
    return RevokeEvent(*header, statement)


def state_of(statements: Iterable[Grant | Revocation]) -> AuthState:
    state = AuthState()
    for n, s in enumerate(statements, 1):
        state.apply(event(s, n), bytes(32), 0)
    return state


def allows(
    statements: Iterable[Grant | Revocation],
    who: koru.Identity,
    action: int,
    namespace: str,
    key: str,
    at: int = T,
    *,
    live: bool = True,
) -> bool:
    ev = Evaluator(state_of(statements), [NODE.public_key])
    return ev.effective(who.public_key, at, live=live).allows(action, namespace, key)


# -- roots, owners, chains ---------------------------------------------------------------------


def test_the_node_key_may_do_anything_and_a_stranger_nothing() -> None:
    assert allows([], NODE, WRITE, "any", "thing")
    assert not allows([], A, READ, "any", "thing")


def test_a_root_grant_gives_what_it_says() -> None:
    g = grant(NODE, A, "users", "a*", "read")
    assert allows([g], A, READ, "users", "alice")
    assert not allows([g], A, WRITE, "users", "alice")
    assert not allows([g], A, READ, "users", "bob")
    assert not allows([g], A, READ, "orders", "alice")  # another key space
    assert not allows([g], B, READ, "users", "alice")


def test_admin_implies_read_and_write() -> None:
    g = grant(NODE, A, "users", "*", "admin")
    assert allows([g], A, READ, "users", "x") and allows([g], A, WRITE, "users", "x")


def test_a_delegated_grant_narrows_its_parent() -> None:
    parent = grant(NODE, A, "users", "*", "read,write")
    child = grant(A, B, "users", "a*", "read", parent=parent)
    facts = [parent, child]
    assert allows(facts, B, READ, "users", "alice")
    assert not allows(facts, B, WRITE, "users", "alice")
    assert not allows(facts, B, READ, "users", "bob")
    assert escalation(child, parent) is None


@pytest.mark.parametrize(
    ("terms", "why"),
    [
        ({"actions": "read,write"}, "actions"),
        ({"namespace": "*"}, "namespace"),
        ({"key": "*"}, "key"),
        ({"expires": None}, "outlives"),
        ({"not_before": 0}, "starts before"),
    ],
)
def test_escalation_beyond_the_parent_never_takes_effect(
    terms: dict[str, object], why: str
) -> None:
    parent = grant(NODE, A, "users", "a*", "read", not_before=T - HOUR, expires=T + HOUR)
    base: dict[str, object] = {
        "namespace": "users",
        "key": "a*",
        "actions": "read",
        "not_before": T - HOUR,
        "expires": T + HOUR,
    }
    base.update(terms)
    child = grant(A, B, parent=parent, **base)  # type: ignore[arg-type]
    problem = escalation(child, parent)
    assert problem is not None and why in problem
    facts = [parent, child]
    ev = Evaluator(state_of(facts), [NODE.public_key])
    assert ev.grant_problem(child, T) is not None
    assert not ev.in_effect(child.id, T)
    # Not even what the parent does give: an escalating grant is void as a whole.
    assert not allows(facts, B, READ, "users", "alice")


def test_a_parentless_grant_needs_a_root_granter() -> None:
    g = grant(A, B, "users", "*", "read")  # A is nobody here
    ev = Evaluator(state_of([g]), [NODE.public_key])
    assert not ev.in_effect(g.id, T)
    assert "not a root" in (ev.grant_problem(g, T) or "")


def test_a_child_whose_parent_went_to_someone_else_is_void() -> None:
    parent = grant(NODE, A, "users", "*", "read")
    child = grant(B, C, "users", "*", "read", parent=parent)  # B holds no such parent
    assert not allows([parent, child], C, READ, "users", "x")
    assert "another identity" in (
        Evaluator(state_of([parent]), [NODE.public_key]).grant_problem(child, T) or ""
    )


def chain(depth: int) -> tuple[list[Grant], koru.Identity]:
    """A chain of ``depth`` grants from the node down, each delegating all of it."""
    people = [ident(100 + i) for i in range(depth)]
    grants = [grant(NODE, people[0], "users", "*", "read")]
    for i in range(1, depth):
        grants.append(grant(people[i - 1], people[i], "users", "*", "read", parent=grants[-1]))
    return grants, people[-1]


def test_chains_up_to_the_depth_limit_work_and_deeper_ones_do_not() -> None:
    grants, last = chain(MAX_DEPTH)
    assert allows(grants, last, READ, "users", "x")
    deeper, too_far = chain(MAX_DEPTH + 1)
    assert not allows(deeper, too_far, READ, "users", "x")
    assert allows(deeper, ident(100 + MAX_DEPTH - 1), READ, "users", "x")
    ev = Evaluator(state_of(deeper[:-1]), [NODE.public_key])
    assert "deep" in (ev.grant_problem(deeper[-1], T) or "")


def test_a_very_deep_forged_chain_is_bounded() -> None:
    grants, last = chain(60)
    ev = Evaluator(state_of(grants), [NODE.public_key])
    assert not ev.effective(last.public_key, T, live=True).scopes


def test_owners_are_roots_too() -> None:
    owner = grant(NODE, OWNER, actions="admin")  # */* admin from a root: an owner
    g = grant(OWNER, A, "users", "*", "write")
    assert allows([owner, g], A, WRITE, "users", "x")
    # Narrower admin does not make an owner: its parentless grants are void.
    partial = grant(NODE, OWNER, "users", "*", "admin")
    assert not allows([partial, g], A, WRITE, "users", "x")


def test_owners_making_each_other_owners_root_nothing() -> None:
    a_to_b = grant(A, B, actions="admin")
    b_to_a = grant(B, A, actions="admin")
    self_made = grant(C, C, actions="admin")
    facts = [a_to_b, b_to_a, self_made]
    for who in (A, B, C):
        assert not allows(facts, who, READ, "users", "x")


# -- time ---------------------------------------------------------------------------------------


def test_not_before_and_expiry_bound_a_grant_and_its_window() -> None:
    g = grant(NODE, A, not_before=T, expires=T + HOUR)
    ev = Evaluator(state_of([g]), [NODE.public_key])
    before = ev.effective(A.public_key, T - 1, live=True)
    during = ev.effective(A.public_key, T + 5, live=True)
    after = ev.effective(A.public_key, T + HOUR, live=True)
    assert not before.scopes and before.until == T
    assert during.scopes and (during.since, during.until) == (T, T + HOUR)
    assert not after.scopes and after.since == T + HOUR


# -- revocation ---------------------------------------------------------------------------------


def test_a_revoked_grant_and_what_it_delegated_stop_at_once() -> None:
    parent = grant(NODE, A, "users", "*", "read,write")
    child = grant(A, B, "users", "*", "read", parent=parent)
    gone = revoke(NODE, parent, T + HOUR)
    facts = [parent, child, gone]
    # Live: the revocation counts as soon as it is held, whatever its time.
    assert not allows(facts, A, READ, "users", "x")
    assert not allows(facts, B, READ, "users", "x")
    # For an event carrying its own time: valid before the revocation, not after.
    assert allows(facts, A, WRITE, "users", "x", T, live=False)
    assert allows(facts, B, READ, "users", "x", T + HOUR - 1, live=False)
    assert not allows(facts, A, WRITE, "users", "x", T + HOUR, live=False)


@pytest.mark.parametrize("who", ["granter", "root", "granter above", "admin"])
def test_who_may_revoke(who: str) -> None:
    admin = grant(NODE, C, "users", "*", "admin")
    parent = grant(NODE, A, "users", "*", "read")
    child = grant(A, B, "users", "a*", "read", parent=parent)
    revoker = {"granter": A, "root": NODE, "granter above": NODE, "admin": C}[who]
    r = revoke(revoker, child, T)
    facts = [admin, parent, child, r]
    assert Evaluator(state_of(facts[:-1]), [NODE.public_key]).revocation_problem(r) is None
    assert not allows(facts, B, READ, "users", "alice")


def test_a_revocation_by_someone_without_authority_changes_nothing() -> None:
    """A forged revocation: well signed, by an identity that may not revoke."""
    g = grant(NODE, A, "users", "*", "read")
    narrow_admin = grant(NODE, C, "users", "a*", "admin")  # does not cover all of g
    for revoker in (B, C):
        r = revoke(revoker, g, T)
        facts = [g, narrow_admin, r]
        assert allows(facts, A, READ, "users", "x")
        problem = Evaluator(state_of(facts[:-1]), [NODE.public_key]).revocation_problem(r)
        assert problem is not None and "revoker" in problem


def test_a_revocation_of_an_unknown_grant_is_refused_for_writing() -> None:
    r = revoke(NODE, grant(NODE, A), T)
    assert "no grant" in (Evaluator(AuthState(), [NODE.public_key]).revocation_problem(r) or "")


def test_mutual_revocations_by_admins_leave_neither_standing() -> None:
    x = grant(NODE, A, "users", "*", "admin")
    y = grant(NODE, B, "users", "*", "admin")
    facts = [x, y, revoke(A, y, T), revoke(B, x, T)]
    assert not allows(facts, A, READ, "users", "k")
    assert not allows(facts, B, READ, "users", "k")


def test_a_web_of_grants_and_revocations_is_decided_in_bounded_work() -> None:
    people = [ident(200 + i) for i in range(30)]
    facts: list[Grant | Revocation] = [grant(NODE, p, "users", "*", "admin") for p in people]
    grants = list(facts)
    for p in people:
        for g in grants:
            facts.append(revoke(p, g, T))  # type: ignore[arg-type]
    ev = Evaluator(state_of(facts), [NODE.public_key])
    for p in people[:3]:
        ev.effective(p.public_key, T, live=True)  # returns, whatever it decides


# -- order independence and attenuation ----------------------------------------------------------


def facts_for_order() -> list[Grant | Revocation]:
    owner = grant(NODE, OWNER, actions="admin")
    p = grant(OWNER, A, "users", "*", "read,write", not_before=T - HOUR)
    c = grant(A, B, "users", "a*", "read", parent=p, not_before=T - HOUR)
    d = grant(B, C, "users", "al*", "read", parent=c, not_before=T - HOUR)
    return [owner, p, c, d, revoke(A, c, T + HOUR), revoke(C, p, T)]  # the last one forged


@given(st.randoms(use_true_random=False))
def test_the_same_statements_in_any_order_decide_the_same(rng: random.Random) -> None:
    facts = facts_for_order()
    shuffled = list(facts)
    rng.shuffle(shuffled)
    for who in (OWNER, A, B, C):
        for at in (T - 1, T + HOUR - 1, T + HOUR):
            for live in (True, False):
                one = allows(facts, who, READ, "users", "alice", at, live=live)
                other = allows(shuffled, who, READ, "users", "alice", at, live=live)
                assert one == other, (who, at, live)


globs = st.text("ab*?", min_size=1, max_size=5)


@given(globs, globs, st.sampled_from(["read", "write", "read,write", "admin"]), st.data())
def test_a_chain_never_gives_more_than_its_root(
    ns: str, key: str, actions: str, data: st.DataObject
) -> None:
    """Attenuation: whatever a delegated grant allows, its parent allows."""
    parent = grant(NODE, A, ns, key, actions)
    child_ns = data.draw(globs)
    child_key = data.draw(globs)
    child_actions = data.draw(st.sampled_from(["read", "write", "admin"]))
    child = grant(A, B, child_ns, child_key, child_actions, parent=parent)
    facts = [parent, child]
    names = st.text("ab*?", min_size=1, max_size=6)
    for _ in range(5):
        n, k = data.draw(names), data.draw(names)
        for bit in (READ, WRITE):
            if allows(facts, B, bit, n, k):
                assert allows(facts, A, bit, n, k)


def test_registered_identities_keep_the_strongest_proof() -> None:
    weak = koru.Identity.mine(0, rng=random.Random(9))
    strong = weak.mined(8)
    for order in ([weak, strong], [strong, weak]):
        state = AuthState()
        for n, who in enumerate(order, 1):
            header = (b"o" * 16, IDENTITY, n, None if n == 1 else b"p" * 32, T)
            state.apply(IdentityEvent(*header, who.public), bytes(32), 0)
        assert state.work(weak.public_key) == strong.work


def test_a_heap_of_grants_to_someone_never_locks_out_what_a_good_grant_gives() -> None:
    """Junk grants to a victim (by someone who may give nothing), more than one
    evaluation's budget, cost time in proportion but never void the victim's good
    grant; and the decision does not depend on the order they arrived in."""
    mallory = ident(66)
    good = grant(NODE, A, "users", "*", "read")
    junk = [grant(mallory, A, f"junk{i}", "*", "admin") for i in range(10_500)]
    for facts in ([good, *junk], [*junk, good]):
        ev = Evaluator(state_of(facts), [NODE.public_key])
        effective = ev.effective(A.public_key, T, live=True)
        assert effective.allows(READ, "users", "x")
        assert not effective.allows(READ, "junk1", "x")
        assert [s.grant for s in effective.scopes] == [good.id]


def test_a_parent_cycle_is_decided_not_followed_forever() -> None:
    """Grant ids are hashes of what names the parent, so no real chain can loop; a
    state made to loop (a tampered checkpoint) is still decided: not in effect."""
    first = grant(A, B, "users", "*", "read", parent=grant(NODE, A))
    second = grant(B, A, "users", "*", "read", parent=grant(NODE, B))
    state = state_of([first, second])
    # Rewire: each grant is filed under the id the other names as its parent.
    assert first.parent is not None and second.parent is not None
    state.grants = {second.parent: first, first.parent: second}
    state.by_grantee = {B.public_key: [second.parent], A.public_key: [first.parent]}
    ev = Evaluator(state, [NODE.public_key])
    for who in (A, B):
        assert not ev.effective(who.public_key, T, live=True).scopes
