"""What decoding CBOR would cost in Python objects, estimated from its items' headers.

A decoder builds the whole value before any schema or capability is checked, and an
item of one byte (an empty array) becomes an object of some 64 bytes (a list and its
slot in its parent): a message of 96 MiB could take 6 GB. Reading each item's header in
turn, string contents skipped, tells in a few steps per item, and stops as soon as the
estimate is over the budget (so a bomb costs at most ``budget / 40`` steps).
"""

from __future__ import annotations

__all__ = ["CONTAINER_COST", "ITEM_COST", "decodes_within"]

#: A list, dict or tagged value, and its slot in its parent.
CONTAINER_COST = 72
#: A number, string or bytes object (without its contents), and its slot.
ITEM_COST = 40


def decodes_within(data: bytes, budget: int, *, strings: bool) -> bool:
    """False if ``data`` would decode to objects costing more than ``budget`` bytes;
    with ``strings``, strings' contents count too (else only their objects: a caller
    whose message size bounds them already)."""
    i, end, cost = 0, len(data), 0
    while i < end:
        head = data[i]
        major, info = head >> 5, head & 31
        i += 1
        arg = info
        if 24 <= info <= 27:
            width = 1 << (info - 24)
            arg = int.from_bytes(data[i : i + width], "big")
            i += width
        if major == 2 or major == 3:
            if info != 31:  # an indefinite string's chunks are items of their own
                i += arg
                cost += ITEM_COST + arg if strings else ITEM_COST
        elif 4 <= major <= 6:
            cost += CONTAINER_COST
        else:
            cost += ITEM_COST
        if cost > budget:
            return False
    return True
