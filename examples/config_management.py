"""Config management and an incident post-mortem, with time travel.

Service settings (timeouts, retries, a feature flag) evolve through an optimisation, a
rollout, an incident and a rollback. The post-mortem then asks: what was the whole
configuration at the moment the incident started, what changed just before it, and
what would the rollback have restored?

Run it with ``python examples/config_management.py``; it uses a fresh temporary
directory.
"""

import contextlib
import tempfile

import trio

import koru

NS = "config"


async def snapshot(db: koru.Database, at: object) -> dict[str, object]:
    """Every setting as it was at ``at`` (settings that did not exist yet are left out)."""
    out = {}
    for key in await db.keys(NS):
        with contextlib.suppress(koru.NoValueAtTimeError):  # not set yet then
            out[key] = (await db.get_at(NS, key, at)).value
    return out


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with koru.open(tmp) as db:
            await db.put_batch(
                [
                    (NS, "timeout_ms", 3000),
                    (NS, "retries", 3),
                    (NS, "new_checkout", False),
                ]
            )
            optimised = await db.put(NS, "timeout_ms", 800)  # "optimisation"
            await trio.sleep(0.01)
            rollout = await db.put(NS, "new_checkout", True)  # the rollout
            await trio.sleep(0.01)
            incident = rollout.datetime  # errors start right after the rollout
            await db.put(NS, "retries", 0)  # a panicked change during the incident
            await db.put(NS, "new_checkout", False)  # rollback of the flag

            print("== configuration when the incident started ==")
            at_incident = await snapshot(db, incident)
            for key, value in sorted(at_incident.items()):
                print(f"  {key} = {value}")

            print("== what changed from the optimisation to the incident ==")
            changes = [
                (h.timestamp, key, h.value)
                for key in await db.keys(NS)
                for h in await db.history(NS, key, since=optimised.datetime, until=incident)
            ]
            for _, key, value in sorted(changes):
                print(f"  {key} -> {value}")

            print("== and since ==")
            now = await snapshot(db, (await db.get_versioned(NS, "new_checkout")).timestamp)
            for key in sorted(now):
                if now[key] != at_incident.get(key):
                    print(f"  {key}: {at_incident.get(key)} -> {now[key]}")

            print("timeout at incident:", at_incident["timeout_ms"])
            print("flag at incident:", at_incident["new_checkout"])
            print("flag now:", await db.get(NS, "new_checkout"))


if __name__ == "__main__":
    trio.run(main)
