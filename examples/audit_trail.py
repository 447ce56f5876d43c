"""Audit trail with time travel: a payment's life, questioned after the fact.

A transaction is re-written as its status moves from pending to authorised to
completed, and an account's balance changes with it. Later an investigator asks what
happened: the full history of the suspicious transaction (its IP address changed, and
it was never authorised), the balance as it was before the payment, and a proof that
nothing was rewritten (every version keeps its id; the log's hash chain and digest
change if any stored byte does).

Run it with ``python examples/audit_trail.py``; it uses a fresh temporary directory.
From a shell, the same questions are ``kdelta log tx/tx-9001``, ``kdelta diff
tx/tx-9001 --from 0 --to 1`` and ``kdelta get accounts/acc-17 --at TIME``.
"""

import tempfile

import trio

import koru


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with koru.open(tmp) as db:
            await db.put("accounts", "acc-17", {"owner": "Dana", "balance": 1200})
            opened = await db.put(
                "tx", "tx-9001", {"amount": 950, "status": "pending", "ip": "10.0.0.4"}
            )
            # The transaction moves on; one update comes from another IP address and
            # the authorisation step never happens.
            await db.put("tx", "tx-9001", {"amount": 950, "status": "pending", "ip": "203.0.113.9"})
            await db.put(
                "tx", "tx-9001", {"amount": 950, "status": "completed", "ip": "203.0.113.9"}
            )
            await db.put("accounts", "acc-17", {"owner": "Dana", "balance": 250})

            print("== history of tx-9001 ==")
            steps = await db.history("tx", "tx-9001")
            for step in steps:
                print(f"  {step.write_id[:10]}  {step.value['status']:<10} ip={step.value['ip']}")
            statuses = [s.value["status"] for s in steps]
            ips = {s.value["ip"] for s in steps}
            print("never authorised:", "authorised" not in statuses)
            print("ip changed:", len(ips) > 1)

            print("== what changed at the IP switch ==")
            change = await db.diff("tx", "tx-9001", 0, 1)
            for c in change.changes:
                print(f"  {c.op} {'.'.join(map(str, c.path))}: {c.old} -> {c.new}")

            before = await db.get_at("accounts", "acc-17", opened.datetime)
            print("balance when the payment was opened:", before.value["balance"])
            print("balance now:", (await db.get("accounts", "acc-17"))["balance"])

            # Immutability: every version is still there, under its own id, and one
            # digest summarises the whole state (equal on every replica).
            ids = [s.write_id for s in steps]
            print("versions kept:", len(ids), "distinct ids:", len(set(ids)) == len(ids))
            print("state digest:", (await db.digest())[:16])


if __name__ == "__main__":
    trio.run(main)
