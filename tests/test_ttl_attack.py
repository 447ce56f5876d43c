"""A hostile reviewer's attacks on values with a time to live where they meet the other
features: parents, batches, deletes, peers (h-ttl)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_expiry import SettableClock, opened

import koru

_CENTURY = 100 * 365 * 86400


@pytest.mark.parametrize("how", ["parents", "batch", "plain"])
async def test_a_ttl_whose_expiry_passes_64_bits_is_refused_before_writing(
    tmp_path: Path, how: str
) -> None:
    """The clock may read up to 2**64 - 2**32 ns (the writer's limit), and one glitched
    reading that far ahead is kept by the read floor. A put with a ttl then expires
    after 2**64 ns. The fused put refused it (InvalidDataError); a put with ``parents``
    and a ``put_batch`` encoded ``expires`` as a CBOR bignum, appended the event, then
    failed to fold it (struct.error): the handle died, and every later open refused the
    log as corrupt. What must hold: the put is refused before anything is written, the
    handle stays usable, and the database reopens."""
    clock = SettableClock(2**64 - 2**32 - 10**12)
    path = tmp_path / "db"
    async with opened(path, clock) as db:
        await db.put("s", "p", 1)
        heads = await db.feed_heads()
        with pytest.raises(koru.InvalidDataError, match="expires"):
            if how == "parents":
                await db.put("s", "q", 2, ttl=_CENTURY, parents=["p"])
            elif how == "batch":
                await db.put_batch([("s", "q", 2)], ttl=_CENTURY)
            else:
                await db.put("s", "q", 2, ttl=_CENTURY)
        assert await db.feed_heads() == heads
        await db.put("s", "r", 3, ttl=1)  # still usable: a ttl that fits is taken
    async with opened(path, clock) as db:
        assert await db.keys("s") == ["p", "r"]
