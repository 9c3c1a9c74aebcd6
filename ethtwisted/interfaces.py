"""
The seams of ethtwisted's storage: where blocks go (L{IBlockStore}, L{ICounterStore}), how the
stats API reads them back (L{ICounterReader}, L{IBlockReader}, L{IChainReader}, L{ILedger}) and
where the fleet view's events go (L{IEventSink}).  Where blocks come from is
L{ethtwisted.node.interfaces}; the records passed are L{ethtwisted.records}.  Each has one module
of implementations; tests and the benchmarks use the same interfaces.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from ethtwisted.records import (
    BlockRecord,
    ChainRange,
    ClientRecord,
    EventRecord,
    Head,
    NodeRecord,
    Received,
    SightingRecord,
    StateEvent,
    StatusReport,
)
from ethtwisted.states import FleetView, State, Thresholds


class IBlockStore(Interface):
    """
    Durable storage: each distinct payload once, plus what each client reported.
    """

    max_payload_bytes: int = Attribute("The largest payload this store keeps whole.")

    def start() -> Deferred[None]:
        """
        Connect and create the tables that are missing; fail if the database cannot be reached.
        """

    def store(batch: Sequence[Received | StatusReport]) -> Deferred[int]:
        """
        Commit C{batch} in one transaction: each payload once, each payload's sighting (one
        per client and payload, the first kept), each client's status and the changes it
        shows; fire with how many payloads were new.  Fail with
        an error that L{ethtwisted.storage.is_rejection} recognises when the batch holds a value
        the store cannot take (nothing of it is then committed), with any other when the store
        is unavailable.
        """

    def close() -> Deferred[None]:
        """
        Release connections.
        """


class ICounterStore(Interface):
    """
    Counters kept beside the durable store (Redis): when each payload was first seen
    (C{eth:hashes}) and how many messages each client address sent (C{eth:ip_addresses}).
    """

    def record(batch: Sequence[Received], group: str) -> Deferred[None]:
        """
        Count C{batch}, named C{group}; fail (rather than wait forever) while the store is
        unreachable.  Recording a group again (its first reply was lost) counts nothing more.
        """

    def ping() -> Deferred[None]:
        """
        Fire once the store answers; fail if it does not.
        """

    def close() -> Deferred[None]:
        """
        Disconnect.
        """


class ICounterReader(Interface):
    """
    The counters read back, as the older stats service showed them: the latest first
    sightings and the messages per client address.  Every store answers them (SQL and Redis
    alike, with the same answers for the same traffic).
    """

    def ping() -> Deferred[None]:
        """
        Fire once the store answers; fail (rather than hang) when it does not.
        """

    def latest_hashes(limit: int) -> Deferred[list[tuple[str, float]]]:
        """
        The C{limit} most recently first-seen payloads: (SHA256, unix time first seen), newest
        first, ties broken by descending SHA256.
        """

    def address_counts(limit: int) -> Deferred[list[tuple[str, int]]]:
        """
        Messages sent per client IP address: the C{limit} busiest, ties broken by address.
        """


class IBlockReader(Interface):
    """
    Reading back the durable store (SQL) for the stats API.  Every list is bounded by its
    C{limit}.
    """

    ledger: ILedger = Attribute("Sightings, node statuses and events over the same store.")
    chain_source = Attribute(
        "The rows of the chains this store holds, for their analysis"
        " (L{ethtwisted.storage.chains.ChainRows})."
    )

    def payload(sha256: str) -> Deferred[str | None]:
        """
        The stored payload with this SHA256, or L{None}.
        """

    def blocks(limit: int, before: str | None = None) -> Deferred[list[BlockRecord] | None]:
        """
        Payloads newest first (by first sighting, then descending SHA256); with C{before}, only
        those after the payload with that SHA256 in this order.  L{None} if C{before} is not a
        stored payload.
        """

    def block(sha256: str) -> Deferred[BlockRecord | None]:
        """
        One payload's record, or L{None}.
        """

    def clients(
        limit: int,
        after: str | None = None,
        chain_id: int | None = None,
        names: Collection[str] | None = None,
    ) -> Deferred[list[ClientRecord]]:
        """
        The clients in the order of their names (by code point), at most C{limit}: only those
        named after C{after}, those whose last block is of chain C{chain_id}, and those among
        C{names}, when given.
        """

    def heads(limit: int) -> Deferred[list[Head]]:
        """
        The best head of each chain that clients currently report, by chain id: the highest
        block a client is on now (the last it reported); of several at that height, the one
        first seen last, then the highest hash (L{ethtwisted.storage.heads}).
        """

    def first_seen() -> Deferred[float | None]:
        """
        When the payload stored first was first seen (L{None} while none is stored).
        """

    def arrivals(since: float, bucket: int) -> Deferred[list[tuple[float, int]]]:
        """
        How many payloads were first seen since C{since}, per C{bucket} seconds: (start of the
        bucket, count), oldest first, empty buckets left out.
        """


class IChainReader(Interface):
    """
    The chains as the fleet saw them, from the blocks stored and their parent links.  Which
    block is canonical is decided on each read: the best head (as L{IBlockReader.heads} picks
    it) and its ancestors by parent hash; where a link is missing (a gap), the walk goes on
    from the block of the next stored height that was first seen last.  The finalized number
    of each chain is given by the caller (L{ILedger.finalized}).
    """

    def chain(
        chain_id: int, low: int, high: int, finalized: int | None
    ) -> Deferred[ChainRange | None]:
        """
        The range C{low}..C{high} of one chain (at most L{MAX_CHAIN_RANGE} heights), or L{None}
        if no block of that chain is stored.
        """

    def blocks(
        chain_id: int, low: int, high: int, finalized: int | None
    ) -> Deferred[ChainRange | None]:
        """
        L{chain}, with every block of the range C{listed} (with who reported it and its
        timestamp).
        """

    def gaps(
        chain_id: int, low: int, high: int
    ) -> Deferred[tuple[int, list[tuple[int, int]]] | None]:
        """
        The gaps of the range C{low}..C{high} of one chain (at most L{MAX_CHAIN_RANGE} heights),
        as L{chain} gives them, with the chain's head; L{None} if no block of it is stored.
        """

    def chains(limit: int, finalized: Mapping[int, int]) -> Deferred[list[ChainRange]]:
        """
        Each chain that clients report (the first C{limit} by chain id), over its last
        L{CHAIN_WINDOW} heights up to its head.
        """


MAX_CHAIN_RANGE = 100_000
"""The most heights one chain read covers."""
CHAIN_WINDOW = 10_000
"""The heights below the head that L{IChainReader.chains} summarises."""


class IFleet(Interface):
    """
    The fleet view's states (L{ethtwisted.states}), kept where several servers agree on them:
    each server calls L{decide} once a second, and each change of state is returned by the one
    call that recorded it.
    """

    def decide(
        server: str,
        now: float,
        connected: Mapping[str, float],
        gone: Mapping[str, float],
        thresholds: Thresholds,
    ) -> Deferred[list[StateEvent]]:
        """
        Record that C{server} (an id of this run of it) holds the connections of the clients
        in C{connected} (name → when a frame of it last arrived) and no longer those in
        C{gone}, decide every watched client's states at C{now} (when it is this server's turn:
        one decides at a time; else nothing is decided), record each change and fire with the
        changes, in order.  Fail with an error that
        L{ethtwisted.storage.is_conflict} recognises when another server decided at the same
        time (nothing is then recorded: try again later).
        """

    def states(clients: Collection[str] | None = None) -> Deferred[dict[str, dict[str, State]]]:
        """
        Every watched client → the states it is in (empty: current); only those of
        C{clients}, when given.
        """

    def view(now: float) -> FleetView | None:
        """
        What this process's last decision read and decided, if it was at most
        L{VIEW_SECONDS<ethtwisted.storage.fleet.VIEW_SECONDS>} before C{now}; else L{None}.
        """

    def events(since: float | None, client: str | None, limit: int) -> Deferred[list[StateEvent]]:
        """
        The C{limit} latest changes of state, newest first: only those at or after C{since},
        and only C{client}'s, when given.
        """


class IDeliveries(Interface):
    """
    Who delivers the state events to a set of webhooks: one owner (a run of a server) at a
    time, holding a lease, from the last event delivered on.
    """

    def claim(
        hook: str, owner: str, now: float, lease: float, settled: int | None
    ) -> Deferred[int | None]:
        """
        Take, or keep, the delivery of the state events to the webhooks C{hook} for C{owner}
        until C{now + lease}, unless another owner holds it; while C{owner} does, the events up
        to C{settled} are recorded as delivered.  Fire with the id of the last event delivered
        to C{hook} (for a new one, the latest event: it is sent no history), or L{None} when
        another owner holds it.
        """

    def release(hook: str, owner: str, settled: int) -> Deferred[None]:
        """
        C{owner} hands the delivery to C{hook} on at once, the events up to C{settled}
        delivered.
        """

    def pending(after: int, limit: int) -> Deferred[list[StateEvent]]:
        """
        The first C{limit} changes of state after the one with id C{after}, oldest first.
        """


class IEventSink(Interface):
    """
    Where the fleet view's events go (webhooks, and what else listens).
    """

    def publish(event: StateEvent) -> None:
        """
        Take C{event}, in order per client; never fail and never block the caller.
        """


class ILedger(Interface):
    """
    Who saw which payload when, and what each client's node says about itself: written by
    L{IBlockStore.store} in the same transaction as the payloads, read back here for the stats
    API.  Every list is bounded by its C{limit}.
    """

    def node_statuses(clients: Sequence[str]) -> Deferred[dict[str, NodeRecord]]:
        """
        The latest status of each of C{clients} that has reported one.
        """

    def finalized(limit: int, since: float) -> Deferred[dict[int, int]]:
        """
        Per chain id (the first C{limit} by id): the fleet's finalized number
        (L{ethtwisted.storage.fleet_finalized}) from the latest status of each client's node,
        of those received at or after C{since}.
        """

    def propagation(clients: Sequence[str], limit: int) -> Deferred[dict[str, list[float]]]:
        """
        For each of C{clients}, the C{limit} blocks it saw last (payloads that are blocks),
        newest first: how many ms it saw each after the first sighting of that payload in the
        fleet (none for a client that saw no block).
        """

    def sightings(sha256: str, limit: int) -> Deferred[list[SightingRecord]]:
        """
        The sightings of one payload, earliest first (then by client).
        """

    def events(client: str, limit: int) -> Deferred[list[EventRecord]]:
        """
        The C{limit} latest changes of C{client}'s state, newest first.
        """

    def missing(
        client: str, chain_id: int, low: int, high: int, limit: int
    ) -> Deferred[list[int]]:
        """
        The heights C{low} to C{high} of chain C{chain_id} that hold a stored block of which
        C{client} reported none, lowest first.
        """

    def prune_sightings(before: float, limit: int) -> Deferred[int]:
        """
        Delete the sightings of the payloads first seen on the (UTC) days before that of
        C{before}: whole days where the store keeps them by day, and at most C{limit} more
        otherwise, those stored first first; fire with about how many.
        """

    def prune_blocks(
        before: float, after: tuple[float, str] | None, limit: int
    ) -> Deferred[tuple[int, tuple[float, str] | None]]:
        """
        Read at most C{limit} payloads first seen before C{before} (in the order of their
        first sighting and SHA256, after the cursor C{after}) and delete those no gap proof
        needs (L{ethtwisted.storage.retention}), with their sightings; fire with how many
        went and the cursor to go on from.
        """
