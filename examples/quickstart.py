"""The README quickstart: store, read, walk history and travel in time.

Run it with ``python examples/quickstart.py``. It uses a fresh temporary directory
so it can run any number of times; drop the argument to ``koru.open()`` to use the
default data directory instead.
"""

import tempfile

import trio

import koru


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with koru.open(tmp) as db:  # zero-config: just a directory
            v1 = await db.put("users", "alice", {"name": "Alice", "age": 30})
            await db.put("users", "alice", {"name": "Alice", "age": 31, "city": "Lyon"})
            print("current:", await db.get("users", "alice"))
            for h in await db.history("users", "alice"):  # every version, oldest first
                print(f"  {h.datetime:%H:%M:%S.%f} {h.write_id[:12]} {h.value}")
            old = await db.get_at("users", "alice", v1.datetime)  # time travel
            print("as of the first write:", old.value)
            print(await db.diff("users", "alice"))
            await db.delete("users", "alice")
            print("after delete, contains:", await db.contains("users", "alice"))
            print(
                "digest:",
                (await db.digest())[:16],
                "stats:",
                (await db.stats()).versions,
                "versions",
            )


if __name__ == "__main__":
    trio.run(main)
