"""
Who delivers the state events to the webhooks, in SQL (L{IDeliveries}): for each set of
webhooks (named by L{ethtwisted.server.feed.hook_id}), one row of C{eth_webhooks} says which
server holds the delivery, until when, and the last event every URL has settled; the events
themselves are read from C{eth_state_events} (L{ethtwisted.storage.fleet}).
"""

from __future__ import annotations

from typing import Any

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred
from zope.interface import implementer

from ethtwisted.interfaces import IDeliveries
from ethtwisted.records import StateEvent
from ethtwisted.storage.fleet import EVENT_COLUMNS, events_of

TABLES = ("eth_webhooks",)


@implementer(IDeliveries)
class SQLDeliveries:
    """
    L{IDeliveries} over an adbapi pool (the store's).
    """

    def __init__(self, pool: adbapi.ConnectionPool, dialect: str) -> None:
        self.pool = pool
        self.placeholder = p = "?" if dialect == "sqlite" else "%s"
        skip = (
            "WHERE 1 = 1 ON CONFLICT (hook) DO NOTHING"
            if dialect == "sqlite"
            else "ON DUPLICATE KEY UPDATE hook = hook"
        )
        # A new set of webhooks starts at the latest event: it is sent no history.
        self.add_hook = (
            "INSERT INTO eth_webhooks (hook, delivered, owner, lease_until)"
            f" SELECT {p}, COALESCE(MAX(id), 0), '', 0 FROM eth_state_events {skip}"
        )

    def _execute(self, txn: Any, statement: str, *args: Any) -> list[Any]:
        txn.execute(statement.replace("?", self.placeholder), args)
        return list(txn.fetchall())

    def claim(
        self, hook: str, owner: str, now: float, lease: float, settled: int | None
    ) -> Deferred[int | None]:
        return self.pool.runInteraction(self._claim, hook, owner, now, lease, settled)

    def _claim(
        self, txn: Any, hook: str, owner: str, now: float, lease: float, settled: int | None
    ) -> int | None:
        txn.execute(self.add_hook, (hook,))
        through = -1 if settled is None else settled
        # delivered first: MySQL gives later assignments the values already assigned.
        self._execute(
            txn,
            "UPDATE eth_webhooks SET delivered = CASE WHEN owner = ? AND delivered < ? THEN ?"
            " ELSE delivered END, owner = ?, lease_until = ?"
            " WHERE hook = ? AND (owner = ? OR lease_until < ?)",
            owner, through, through, owner, now + lease, hook, owner, now,
        )  # fmt: skip
        ((holder, delivered),) = self._execute(
            txn, "SELECT owner, delivered FROM eth_webhooks WHERE hook = ?", hook
        )
        return int(delivered) if holder == owner else None

    def release(self, hook: str, owner: str, settled: int) -> Deferred[None]:
        return self.pool.runInteraction(self._release, hook, owner, settled)

    def _release(self, txn: Any, hook: str, owner: str, settled: int) -> None:
        self._execute(
            txn,
            "UPDATE eth_webhooks SET delivered = CASE WHEN delivered < ? THEN ? ELSE delivered"
            " END, lease_until = 0 WHERE hook = ? AND owner = ?",
            settled, settled, hook, owner,
        )  # fmt: skip

    def pending(self, after: int, limit: int) -> Deferred[list[StateEvent]]:
        statement = (
            f"SELECT {EVENT_COLUMNS} FROM eth_state_events WHERE id > ? ORDER BY id LIMIT ?"
        )
        return events_of(self.pool, self.placeholder, statement, after, limit)
