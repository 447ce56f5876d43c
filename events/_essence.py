"""Events of the essence agent: the genome, the deep tier's portable digest of a database,
recorded by the genome-update process so that the log says what it saw and when."""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

from ._errors import CodecError
from ._event import Event
from ._fields import raw_bytes
from ._registry import Header, register_event_type

__all__ = ["ESSENCE", "MAX_GENOME_SIZE", "GenomeEvent"]

#: The agent whose log holds genomes.
ESSENCE = "essence"
#: A genome is about 1 KB; anything much larger is not one.
MAX_GENOME_SIZE = 64 * 1024


class _Genome(NamedTuple):
    origin: bytes
    agent: str
    seq: int
    prev: bytes | None
    hlc: int
    genome: bytes


class GenomeEvent(_Genome, Event):
    """A genome (its canonical CBOR bytes, see :mod:`koru._genome`) as the genome
    process took it."""

    __slots__ = ()
    TAG: ClassVar[str] = "genome"


def _decode(header: Header, body: Any) -> Event:
    if type(body) is not list or len(body) != 1:
        raise CodecError("genome body must be [genome bytes]")
    genome = raw_bytes(body[0], "genome")
    if len(genome) > MAX_GENOME_SIZE:
        raise CodecError(f"a genome of {len(genome)} bytes is over {MAX_GENOME_SIZE}")
    return GenomeEvent(*header, genome)


register_event_type(GenomeEvent, lambda e: [e.genome], _decode)
