"""The genome: the deep tier, a small portable digest of a database.

About a kilobyte that says what a database holds without holding it: each agent's log
length and chain root (this node's own perspective), the state digest (equal on every
node holding the same events), a hash of every feed's head (which events of which
origins are held), counts, and a summary of the namespaces. Kept beside a backup, it
verifies the backup or a replica restored from it (:func:`verify_genome`); taken daily
by the genome process, it is recorded in the essence agent's log, so the log itself
says what the database was at each point.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, NamedTuple

import blake3
import cbor2

from koru.events import (
    AGENTS,
    NODE_ID_SIZE,
    InvalidArgumentError,
    InvalidDataError,
    LogStore,
    refuse_tags,
)
from koru.projections import FeedState, KvState, VectorState, state_digest

if TYPE_CHECKING:
    from ._database import Database

__all__ = ["Genome", "GenomeCheck", "genome_of", "verify_genome"]

_FORMAT = 1
#: Namespaces listed by name (the largest); the rest are in the summary's hash.
_NAMESPACES = 16


class Genome(NamedTuple):
    """A database's genome (see the module doc). ``to_bytes`` gives its portable form
    (canonical CBOR, about 1 KB); ``Genome.from_bytes`` reads it back, checked."""

    node: str
    #: The newest timestamp the database had seen (ns since the epoch).
    taken: int
    digest: str
    #: blake3 over every feed's (origin, agent, last seq, last event id), sorted.
    heads: str
    feeds: int
    keys: int
    versions: int
    #: agent -> (records in this node's log, chain root), for agents with records.
    agents: dict[str, tuple[int, str]]
    namespaces: int
    #: The largest namespaces by live keys (at most 16), and a hash of all of them.
    largest: dict[str, int]
    summary: str

    def to_bytes(self) -> bytes:
        """Canonical CBOR: the format, the fields, and a blake3 of those (so that a
        genome damaged in storage is told from a database that differs)."""
        fields = list(self)
        fields[self._fields.index("agents")] = {a: list(v) for a, v in self.agents.items()}
        body = [_FORMAT, *fields]
        seal = blake3.blake3(cbor2.dumps(body, canonical=True)).digest()
        return bytes(cbor2.dumps([*body, seal], canonical=True))

    @classmethod
    def from_bytes(cls, data: bytes) -> Genome:
        """Raises InvalidDataError for bytes that are not an intact genome."""
        try:
            raw = cbor2.loads(data, max_depth=8, semantic_decoders=refuse_tags())
            # (An empty array raised IndexError here, and agents of another type than a
            # map AttributeError below, not InvalidDataError, h-proc.)
            if type(raw) is not list or len(raw) != len(cls._fields) + 2 or raw[0] != _FORMAT:
                raise ValueError("not a genome of format 1")
            seal = blake3.blake3(cbor2.dumps(raw[:-1], canonical=True)).digest()
            if raw[-1] != seal:
                raise ValueError("its checksum does not match (damaged)")
            genome = cls(*raw[1:-1])
            if type(genome.agents) is not dict:
                raise ValueError("malformed agents")
            genome = genome._replace(agents={a: (c, r) for a, (c, r) in genome.agents.items()})
            _check(genome)
            if genome.to_bytes() != data:
                raise ValueError("not the canonical encoding")
            return genome
        except (ValueError, TypeError, KeyError, cbor2.CBORDecodeError) as exc:
            raise InvalidDataError(f"not a koru genome: {exc}") from None


def _check(g: Genome) -> None:
    hexes = (g.node, g.digest, g.heads, g.summary)
    if not all(type(h) is str for h in hexes) or len(bytes.fromhex(g.node)) != NODE_ID_SIZE:
        raise ValueError("malformed ids")
    # A genome lists only agents with records, and at most 16 namespaces by name.
    # (Counts below 1 and any "largest" were taken; verify_genome then raised KeyError
    # or its log reader's argument error instead of an answer, h-proc.)
    for agent, (count, root) in g.agents.items():
        if agent not in AGENTS or type(count) is not int or len(bytes.fromhex(root)) != 32:
            raise ValueError(f"malformed agent {agent!r}")
        if count < 1:
            raise ValueError(f"the {agent} agent is listed with {count} records")
    largest = g.largest
    if type(largest) is not dict or len(largest) > _NAMESPACES:
        raise ValueError("malformed largest namespaces")
    if not all(type(ns) is str and type(n) is int and n >= 0 for ns, n in largest.items()):
        raise ValueError("malformed largest namespaces")
    numbers = (g.taken, g.feeds, g.keys, g.versions, g.namespaces)
    if not all(type(n) is int and n >= 0 for n in numbers):
        raise ValueError("malformed counts")


def _heads(feeds: FeedState) -> tuple[str, int]:
    hasher = blake3.blake3(b"koru-delta/heads/v1")
    for (origin, agent), (seq, eid) in sorted(feeds.heads.items()):
        hasher.update(origin + agent.encode() + b"\0" + seq.to_bytes(8, "big") + eid)
    return hasher.hexdigest(), len(feeds.heads)


def genome_of(
    store: LogStore, kv: KvState, vectors: VectorState, feeds: FeedState, node: bytes, hlc: int
) -> Genome:
    """The genome of a database's state (its projections and its store's logs)."""
    # Each namespace's live keys as the state counts them (not by listing them: every
    # key's records from every layer and table, on the event loop, held every task
    # for 2.7 s at a million keys, h-proc).
    counts = {ns: kv.ns_live[ns] for ns in kv.live_namespaces()}
    summary = blake3.blake3(cbor2.dumps(sorted(counts.items()), canonical=True)).hexdigest()
    largest = dict(sorted(counts.items(), key=lambda c: (-c[1], c[0]))[:_NAMESPACES])
    agents = {}
    for agent in store.agents():
        cursor = store.cursor(agent)
        if cursor.count:
            agents[agent] = (cursor.count, cursor.root.hex())
    heads, n_feeds = _heads(feeds)
    return Genome(
        node.hex(),
        hlc,
        state_digest(kv, vectors),  # (Database.digest())
        heads,
        n_feeds,
        kv.live,
        kv.versions,
        agents,
        len(counts),
        largest,
        summary,
    )


class GenomeCheck(NamedTuple):
    """What :func:`verify_genome` found. ``ok``: the database holds everything the
    genome describes, unchanged; ``exact``: it holds exactly that (same events, same
    state); ``problems`` say what fails, ``notes`` what differs without failing (a
    backup that has moved on since)."""

    ok: bool
    exact: bool
    problems: tuple[str, ...]
    notes: tuple[str, ...]


def check(genome: Genome, db: Genome, store: LogStore) -> GenomeCheck:
    """Compare a genome with the genome of a database now (and its logs, for roots)."""
    problems: list[str] = []
    notes: list[str] = []
    exact = genome.heads == db.heads
    if exact:
        if genome.digest != db.digest:
            problems.append("it holds the same events but its state digest differs")
        if (genome.keys, genome.versions) != (db.keys, db.versions):
            problems.append("it holds the same events but other key or version counts")
    if genome.node == db.node:
        # A backup of this node: its logs must still hold what the genome saw, as it was.
        for agent, (count, root) in genome.agents.items():
            held = db.agents.get(agent, (0, ""))[0]
            if held < count:
                problems.append(f"the {agent} log holds {held} records, the genome {count}")
            elif held == count and db.agents[agent][1] != root:
                problems.append(f"the {agent} log's chain root differs")
            elif held > count and _root_at(store, agent, count) != root:
                problems.append(f"the {agent} log differs from the genome's at record {count}")
        if not exact and not problems:
            notes.append("it holds more than the genome describes (written since)")
    elif not exact:
        problems.append(
            f"it holds other events than the genome describes ({db.feeds} feeds here, "
            f"{genome.feeds} in the genome)"
        )
    return GenomeCheck(not problems, exact and not problems, tuple(problems), tuple(notes))


def _root_at(store: LogStore, agent: str, count: int) -> str | None:
    for record in store.records(agent, count - 1):
        return record.root.hex()
    return None


async def verify_genome(
    database: Database | str | os.PathLike[str], genome: Genome | bytes
) -> GenomeCheck:
    """Check a database (an open one, or a directory, opened read-only) against a
    genome: does it hold everything the genome describes, unchanged?

    Raises:
        InvalidDataError: ``genome`` is not a genome.
        InvalidArgumentError: ``database`` is neither a Database nor a path.
    """
    from ._database import Database
    from ._open import open as open_database

    if isinstance(genome, bytes | bytearray):
        genome = Genome.from_bytes(bytes(genome))
    if not isinstance(genome, Genome):
        raise InvalidDataError(f"a genome is a Genome or its bytes, not {genome!r}")
    if isinstance(database, Database):
        return check(genome, await database.genome(), database._store)
    if not isinstance(database, str | os.PathLike):
        raise InvalidArgumentError(f"verify_genome takes a Database or a path, not {database!r}")
    async with open_database(database, readonly=True) as db:
        return check(genome, await db.genome(), db._store)
