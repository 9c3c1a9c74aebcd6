"""
The sightings by day: on MySQL/MariaDB C{eth_sightings} is partitioned by C{day} (the UTC day
its payload was first seen), one partition a day, named C{d<day>}, with C{pmax} above them for
whatever comes later than the days made.  L{ensure} makes the days ahead (splitting the empty
C{pmax}), L{drop_before} drops whole old days, whatever their size, and L{delete_before} deletes
what is left before a day a bounded number of rows at a time (SQLite has no partitions; on
MySQL, rows older than the first partition, such as those an older store had).
"""

from __future__ import annotations

from typing import Any

IN_LIMIT = 500
"""The most values one statement lists in an C{IN} (SQLite allows 999 variables)."""
DAYS_AHEAD = 2
"""Partitions made for the days after today, so midnight never finds its day missing."""
MAX_NEW_PARTITIONS = 400
"""Partitions made at once at most; older days then share the first one."""
SECONDS_A_DAY = 86400
ID_ORDER_SECONDS = 600
"""How far the order of the payloads' ids may be from that of their first sightings: a
commit gives its new payloads ids in the order of their SHA256, and servers commit side by
side; ids are in order across commits some seconds apart."""


def _days(txn: Any) -> list[tuple[str, int | None, int]]:
    """
    The partitions of C{eth_sightings}: name, the day it stops before (L{None} for C{pmax}),
    and about how many rows it holds; in order.  Empty when the table is not partitioned.
    """
    txn.execute(
        "SELECT partition_name, partition_description, table_rows"
        " FROM information_schema.partitions WHERE table_schema = DATABASE()"
        " AND table_name = 'eth_sightings' AND partition_name IS NOT NULL"
        " ORDER BY partition_ordinal_position"
    )
    return [
        (name, None if bound == "MAXVALUE" else int(bound), int(rows or 0))
        for name, bound, rows in txn.fetchall()
    ]


def ensure(txn: Any, first: int, last: int) -> None:
    """
    Make a partition for each day from C{first} (or after the last one made) to C{last}: each
    C{d<day>} holds its day (and, the first one, every earlier day).  Another server may do it
    at the same time; only a day still missing in the end is an error.
    """
    bounds = [bound for _, bound, _ in _days(txn) if bound is not None]
    start = max(first, bounds[-1]) if bounds else first
    days = range(start, min(last + 1, start + MAX_NEW_PARTITIONS))
    if not days:
        return
    parts = ", ".join(f"PARTITION d{d} VALUES LESS THAN ({d + 1})" for d in days)
    try:
        txn.execute(
            "ALTER TABLE eth_sightings REORGANIZE PARTITION pmax"
            f" INTO ({parts}, PARTITION pmax VALUES LESS THAN MAXVALUE)"
        )
    except Exception:
        bounds = [bound for _, bound, _ in _days(txn) if bound is not None]
        if not bounds or bounds[-1] < days[-1] + 1:
            raise


def drop_before(txn: Any, day: int) -> int:
    """
    Drop the partitions that hold only days before C{day}; about how many rows they held.
    """
    old = [(name, rows) for name, bound, rows in _days(txn) if bound is not None and bound <= day]
    if not old:
        return 0
    txn.execute(f"ALTER TABLE eth_sightings DROP PARTITION {', '.join(n for n, _ in old)}")
    return sum(rows for _, rows in old)


def delete_before(txn: Any, p: str, day: int, limit: int) -> int:
    """
    Delete at most C{limit} sightings of payloads first seen before C{day}, in the order of
    the payloads' ids (the order they were first stored in): read from the first, up to the
    highest id of the payloads first seen in the last L{ID_ORDER_SECONDS} before that day, so
    a table with none left is not read through.
    """
    cut = day * SECONDS_A_DAY
    txn.execute(
        f"SELECT MAX(id) FROM eth_blocks WHERE first_seen < {p} AND first_seen >= ("
        f"SELECT MAX(first_seen) FROM eth_blocks WHERE first_seen < {p}) - {p}",
        (cut, cut, ID_ORDER_SECONDS),
    )
    row = txn.fetchone()
    if row is None or row[0] is None or limit < 1:
        return 0
    txn.execute(
        "SELECT block_id, client_id FROM eth_sightings"
        f" WHERE block_id <= {p} AND day < {p} ORDER BY block_id, client_id LIMIT {p}",
        (int(row[0]), day, limit),
    )
    keys = txn.fetchall()
    if not keys:
        return 0
    block_id, client_id = keys[-1]
    txn.execute(
        f"DELETE FROM eth_sightings WHERE day < {p}"
        f" AND (block_id < {p} OR (block_id = {p} AND client_id <= {p}))",
        (day, block_id, block_id, client_id),
    )
    return int(txn.rowcount)
