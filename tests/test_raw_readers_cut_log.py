"""The readers of raw records (``koru.replay``, ``kdelta replay``, ``events`` and
``export``) hold the logs to what the checkpoint proves durable, as an open does: a log
cut short below it is data loss, not a shorter history. They used to read such a log
to where it stopped and exit 0: a replay printed the digest of half the data, and an
export (a backup) silently left out everything past the cut."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_cli import failed, kdelta

import koru
from koru.events import AGENTS


async def _cut(path: Path) -> None:
    """A database checkpointed over two thousand puts, its storage log then cut to
    half its length (below the checkpoint's cursor)."""
    async with koru.open(path, sync="os", processes=False) as db:
        for i in range(2000):
            await db.put("n", f"k{i}", {"i": i})
        await db.checkpoint()
    (segment,) = (path / "logs" / "storage").glob("*.seg")
    segment.write_bytes(segment.read_bytes()[: segment.stat().st_size // 2 + 7])


async def test_koru_replay_of_a_log_cut_below_the_checkpoint_is_data_loss(
    tmp_path: Path,
) -> None:
    await _cut(tmp_path / "db")
    with pytest.raises(koru.DataLossError, match="checkpoint proves"):
        koru.replay(tmp_path / "db")


@pytest.mark.parametrize("command", [["replay"], ["events"], ["export", "--format", "jsonl"]])
async def test_kdelta_readers_of_a_log_cut_below_the_checkpoint_fail(
    tmp_path: Path, command: list[str]
) -> None:
    await _cut(tmp_path / "db")
    failed(kdelta(tmp_path / "db", *command), 3, "checkpoint proves")


async def test_the_same_readers_of_an_intact_log_beside_its_checkpoint_read_it_all(
    tmp_path: Path,
) -> None:
    path = tmp_path / "db"
    async with koru.open(path, sync="os", processes=False) as db:
        for i in range(300):
            await db.put("n", f"k{i}", i)
        await db.checkpoint()
        await db.put("n", "after", 1)  # past the checkpoint: read too
        digest = await db.digest()
    result = koru.replay(path)
    assert result.digest == digest and result.keys == 301
    ran = kdelta(path, "--json", "events", "--agent", "storage")
    assert ran.code == 0 and len(ran.lines()) == 301
    assert set(AGENTS) >= set(result.events)
    assert result.events["storage"] == 301  # every put, the one past the checkpoint too
