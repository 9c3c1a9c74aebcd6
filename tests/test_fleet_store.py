"""
The fleet view in SQL (L{ethtwisted.storage.fleet.SQLFleet}) on SQLite and on MySQL (a private
MariaDB): states decided from what the store holds, each change recorded once and read back,
also when several servers decide at the same moment on one database.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import DeferredList
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from ethtwisted.frames import Status, SyncProgress
from ethtwisted.interfaces import IFleet
from ethtwisted.records import Received, StateEvent, StatusReport
from ethtwisted.states import RECONNECT_GRACE, Thresholds
from ethtwisted.storage import is_conflict
from ethtwisted.storage.fleet import SQLFleet
from ethtwisted.storage.sql_pool import parse_db_url
from ethtwisted.storage.sql_store import SQLStore
from tests.blocks import T0
from tests.fleet_reports import CHAIN, Opener, T, received, started


def changes(events: list[StateEvent]) -> list[tuple[str, str, str]]:
    return [(e.client, e.state, e.event) for e in events]


@pytest_twisted.ensureDeferred
async def test_the_fleet_store_provides_its_interface(open_store: Opener) -> None:
    """The SQL store's fleet is an L{IFleet}."""
    store = await started(open_store)
    assert verifyObject(IFleet, store.fleet)


@pytest_twisted.ensureDeferred
async def test_behind_then_current_each_change_once(open_store: Opener) -> None:
    """
    A client left 10 blocks behind another enters C{behind} once the fleet has had block
    head + 4 for over 30 s, is told so once (a second decision changes nothing), and leaves it
    once it catches up; the events carry heads, times and a text, and read back newest first.
    """
    store = await started(open_store)
    await store.store([received("b", n, T0 + n) for n in range(0, 21)])
    await store.store([received("a", n, T0 + n) for n in range(0, 11)])
    fleet = store.fleet
    heard = {"a": T0 + 50, "b": T0 + 50}
    # The fleet reached 14 (10 + 3 + 1) at T0 + 14: behind from T0 + 44 on.
    assert await fleet.decide("s1", T0 + 44, heard, {}, T) == []
    entered = await fleet.decide("s1", T0 + 45, heard, {}, T)
    assert changes(entered) == [("a", "behind", "entered")]
    (event,) = entered
    assert (event.chain_id, event.head, event.best_head, event.since, event.at) == (
        CHAIN, 10, 20, T0 + 14, T0 + 45)  # fmt: skip
    assert "a" in event.text and "behind" in event.text
    assert await fleet.decide("s1", T0 + 46, heard, {}, T) == []
    assert (await fleet.states()) == {
        "a": {"behind": (await fleet.states())["a"]["behind"]},
        "b": {},
    }
    await store.store([received("a", n, T0 + 47) for n in range(11, 21)])
    left = await fleet.decide("s1", T0 + 48, heard, {}, T)
    assert changes(left) == [("a", "behind", "left")]
    assert (left[0].head, left[0].best_head, left[0].since) == (20, 20, T0 + 14)
    assert await fleet.states() == {"a": {}, "b": {}}
    listed = await fleet.events(None, None, 10)
    assert [e.id for e in listed] == [left[0].id, event.id]
    assert listed[0] == left[0] and listed[1] == event
    assert await fleet.events(T0 + 46, None, 10) == [left[0]]
    assert await fleet.events(None, "b", 10) == []
    assert len(await fleet.events(None, "a", 1)) == 1


@pytest_twisted.ensureDeferred
async def test_stalled_and_silent_as_the_presence_says(open_store: Opener) -> None:
    """
    A client whose connection ends is silent past the grace and current again once a server
    holds it; one whose head stops while the chain goes on is stalled after 60 s.
    """
    store = await started(open_store)
    await store.store([received("a", n, T0 + n) for n in range(0, 6)])
    await store.store([received("b", n, T0 + n) for n in range(0, 6)])
    fleet = store.fleet
    both = {"a": T0 + 5, "b": T0 + 5}
    assert await fleet.decide("s1", T0 + 5, both, {}, T) == []
    # a's connection ends at T0 + 6.
    assert await fleet.decide("s1", T0 + 6, {"b": T0 + 6}, {"a": T0 + 5.5}, T) == []
    gone = await fleet.decide("s1", T0 + 6 + RECONNECT_GRACE + 1, {"b": T0 + 9}, {}, T)
    assert changes(gone) == [("a", "silent", "entered")]
    assert gone[0].since == T0 + 5.5
    # Another server holds a now; s1, which decides, sees it there.
    assert await fleet.decide("s2", T0 + 12, {"a": T0 + 12}, {}, T) == []
    back = await fleet.decide("s1", T0 + 12.5, {"b": T0 + 12}, {}, T)
    assert changes(back) == [("a", "silent", "left")]
    # b goes on to 20 at T0 + 20; a stays at 5, last head at T0 + 5.
    await store.store([received("b", n, T0 + 20) for n in range(6, 21)])
    heard = {"a": T0 + 65, "b": T0 + 65}
    assert changes(await fleet.decide("s2", T0 + 65, heard, {}, T)) == [("a", "behind", "entered")]
    stalled = await fleet.decide("s2", T0 + 65.5, heard, {}, T)
    assert changes(stalled) == [("a", "stalled", "entered")]
    assert stalled[0].since == T0 + 5


@pytest_twisted.ensureDeferred
async def test_a_server_gone_without_a_word_leaves_its_clients_silent(open_store: Opener) -> None:
    """
    A server killed leaves its rows saying it holds the client: once they are older than
    C{silent_seconds}, that says nothing, and the client is silent.
    """
    store = await started(open_store)
    fleet = store.fleet
    assert await fleet.decide("dead", T0, {"a": T0}, {}, T) == []
    assert await fleet.decide("alive", T0 + 60, {}, {}, T) == []
    silent = await fleet.decide("alive", T0 + 61, {}, {}, T)
    assert changes(silent) == [("a", "silent", "entered")]


@pytest_twisted.ensureDeferred
async def test_syncing_from_the_latest_status(open_store: Opener) -> None:
    """A client whose node reports syncing is C{syncing} until a status says otherwise."""
    store = await started(open_store)
    fleet = store.fleet
    syncing = Status(syncing=SyncProgress(current=5, highest=90))
    await store.store([StatusReport("a", T0, syncing)])
    assert changes(await fleet.decide("s", T0, {"a": T0}, {}, T)) == [("a", "syncing", "entered")]
    await store.store([StatusReport("a", T0 + 1, Status(syncing=False))])
    assert changes(await fleet.decide("s", T0 + 1, {"a": T0 + 1}, {}, T)) == [
        ("a", "syncing", "left")
    ]


@pytest_twisted.ensureDeferred
async def test_the_minority_at_a_contested_height_is_on_a_fork(open_store: Opener) -> None:
    """
    Three clients, one of them reporting its own blocks at the same heights: after 30 s it is
    on a fork, the other two are not; once it reports the fleet's blocks there, it leaves.
    """
    store = await started(open_store)
    fleet = store.fleet
    await store.store([received(c, n, T0 + n) for c in "ab" for n in range(0, 8)])
    await store.store([received("c", n, T0 + n) for n in range(0, 4)])
    await store.store([received("c", n, T0 + n + 0.5, "c") for n in range(4, 8)])
    heard = {c: T0 + 40 for c in "abc"}
    assert await fleet.decide("s", T0 + 34, heard, {}, T) == []
    forked = await fleet.decide("s", T0 + 35, heard, {}, T)
    assert changes(forked) == [("c", "fork", "entered")]
    assert forked[0].since == T0 + 4.5
    await store.store([received("c", n, T0 + 36) for n in range(4, 8)])
    assert changes(await fleet.decide("s", T0 + 37, heard, {}, T)) == [("c", "fork", "left")]


@pytest_twisted.ensureDeferred
async def test_a_fleet_gone_over_to_a_shorter_branch_is_not_behind_the_one_it_left(
    open_store: Opener,
) -> None:
    """
    Two clients that left blocks 6-12 for a branch of two blocks from 5 are on the best head
    (the highest block a client is on, not the highest stored): neither is behind, however
    long after.
    """
    store = await started(open_store)
    fleet = store.fleet
    await store.store([received(c, n, T0 + n) for c in "ab" for n in range(0, 13)])
    await store.store([received(c, n, T0 + 20, "b") for c in "ab" for n in (6, 7)])
    heard = {c: T0 + 200 for c in "ab"}
    assert await fleet.decide("s", T0 + 100, heard, {}, T) == []
    assert await fleet.decide("s", T0 + 200, heard, {}, T) == []
    assert await fleet.states() == {"a": {}, "b": {}}


@pytest_twisted.ensureDeferred
async def test_servers_deciding_at_once_record_each_change_once(open_store: Opener) -> None:
    """
    Three servers, each with a pool of its own, decide at the same moments on one database:
    every change is recorded and returned by exactly one of them; a server that collided with
    another (Galera) fails with a conflict and records nothing.
    """
    stores = [await started(open_store) for _ in range(3)]
    await stores[0].store([received("b", n, T0 + n) for n in range(0, 21)])
    await stores[0].store([received("a", n, T0 + n) for n in range(0, 11)])
    told: list[StateEvent] = []
    for step, now in enumerate([T0 + 40, T0 + 45, T0 + 46, T0 + 50, T0 + 55]):
        if step == 3:
            await stores[1].store([received("a", n, T0 + 49) for n in range(11, 21)])
        heard = {"a": now, "b": now}
        results = await DeferredList(
            [s.fleet.decide(f"s{i}", now, heard, {}, T) for i, s in enumerate(stores)],
            consumeErrors=True,
        )
        for ok, value in results:
            if ok:
                told += value
            else:
                assert isinstance(value, Failure) and is_conflict(value), value
    assert changes(told) == [("a", "behind", "entered"), ("a", "behind", "left")]
    assert sorted(await stores[2].fleet.events(None, None, 10), key=lambda e: e.id) == told


@pytest_twisted.ensureDeferred
async def test_a_fork_ahead_of_the_fleet_puts_nobody_behind(open_store: Opener) -> None:
    """
    A client on blocks of its own, far ahead of the two others: it is on a fork, and the best
    head the others are measured against is theirs, so they are not behind; the fork client
    reports the best head of the fleet, not its own.
    """
    store = await started(open_store)
    fleet = store.fleet
    await store.store([received(c, n, T0 + n) for c in "ab" for n in range(0, 8)])
    await store.store([received("c", n, T0 + n) for n in range(0, 4)])
    await store.store([received("c", n, T0 + n / 10, "c") for n in range(4, 30)])
    heard = {c: T0 + 100 for c in "abc"}
    states = await fleet.decide("s", T0 + 100, heard, {}, T)
    assert changes(states) == [("c", "fork", "entered")]
    assert (states[0].head, states[0].best_head) == (29, 7)


@pytest_twisted.ensureDeferred
async def test_a_client_gone_for_a_week_is_no_longer_watched(open_store: Opener) -> None:
    """
    A client no server has held for over a week (a node taken out of the fleet) is forgotten:
    it has no states any more, with no event; one that comes back is watched again.
    """
    store = await started(open_store)
    fleet = store.fleet
    await fleet.decide("s", T0, {"a": T0, "b": T0}, {}, T)
    assert await fleet.decide("s", T0 + 10, {"b": T0 + 10}, {"a": T0}, T) == []
    assert changes(await fleet.decide("s", T0 + 14, {"b": T0 + 14}, {}, T)) == [
        ("a", "silent", "entered")
    ]
    week = 7 * 86400
    assert await fleet.decide("s", T0 + week, {"b": T0 + week}, {}, T) == []
    assert set(await fleet.states()) == {"a", "b"}
    assert await fleet.decide("s", T0 + week + 11, {"b": T0 + week + 11}, {}, T) == []
    assert await fleet.states() == {"b": {}}
    back = T0 + week + 20
    assert await fleet.decide("s", back, {"a": back, "b": back}, {}, T) == []
    assert await fleet.states() == {"a": {}, "b": {}}


@pytest_twisted.async_yield_fixture(params=["sqlite", "mysql"])
async def twins(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[SQLStore, SQLStore]]:
    """Two started stores, each on an empty database of its own."""
    if request.param == "sqlite":
        urls = [parse_db_url(f"sqlite:///{tmp_path / f'{n}.sqlite'}") for n in "ab"]
    else:
        db = request.getfixturevalue("mysql_db")
        other = f"{db.name}_twin"
        db.server.create_database(other)
        urls = [
            parse_db_url(u).with_password(db.password) for u in (db.url, db.server.url_for(other))
        ]
    stores = [SQLStore(url, reactor) for url in urls]
    for store in stores:
        await store.start()
    yield stores[0], stores[1]
    for store in stores:
        await store.close()
    if request.param == "mysql":
        db.server.drop_database(other)


def fleet_history(t: int) -> list[Received | StatusReport]:
    """
    What the fleet sends in second C{t} of L{test_deciding_from_what_changed_is_deciding_anew}:
    a, b and c follow chain 1 a block a second; d leaves for a branch of its own at 30 and
    comes back at 41; e reports the blocks 12 s late; f stops at 20; g, an older client (never
    watched), reports every other block.  At 36, c reports a second block at height 30 (a
    height contested already) and a one at 34 (not contested before); at 38, b reports c's
    block at 30, then its head; at 47, a sends three blocks out of order in one commit; at 50,
    b's block 51 is stored as having arrived at 30; b's node syncs from 15 to 22.
    """
    batch: list[Received | StatusReport] = []
    at = T0 + t
    for client in "abc":
        batch.append(received(client, t, at))
    batch.append(received("d", t, at, "d" if 30 <= t <= 40 else "a"))
    if t >= 12:
        # The block the others sent 12 s before: the same payload, seen now.
        batch.append(replace(received("e", t - 12, at - 12), received=at, seen=at))
    if t <= 20:
        batch.append(received("f", t, at))
    if t % 2 == 0:
        batch.append(received("g", t, at))
    if t == 36:
        batch += [received("c", 30, at + 0.5, "c"), received("a", 34, at + 0.5, "e")]
    if t == 38:
        again = replace(received("c", 30, T0 + 36.5, "c"), client="b", received=at, seen=at - 0.5)
        batch += [again, received("b", 38, at + 0.6)]
    if t == 47:
        batch += [received("a", 45, at + 0.6, "b"), received("a", 43, at + 0.7, "b"),
                  received("a", 47, at + 0.8)]  # fmt: skip
    if t == 50:
        # A commit late by 20 s: its row of eth_clients says it arrived then.
        batch.append(received("b", 51, T0 + 30))
    if t in (15, 22):
        batch.append(
            StatusReport("b", at, Status(syncing=SyncProgress(1, 9) if t == 15 else False))
        )
    return batch


@pytest_twisted.ensureDeferred
async def test_deciding_from_what_changed_is_deciding_anew(
    twins: tuple[SQLStore, SQLStore],
) -> None:
    """
    A server that decides each second from what changed since its last decision (its presence
    and states kept, the sightings read only where clients sent something) decides exactly as
    a server that reads everything afresh each second, through new heads, a client behind, one
    stalled, a fork and the way back, a height contested late, blocks sent out of order, a
    node syncing, a client gone and back, an unwatched client, and another server taking over
    once the first has not decided for 3 s, then the first taking over again (each time
    reading everything); a server that may not decide (another does) decides nothing.
    """
    kept, anew = twins
    thresholds = Thresholds(behind_blocks=3, behind_seconds=5, stall_seconds=10,
                            silent_seconds=12, fork_seconds=3)  # fmt: skip
    other = SQLStore(kept.url, reactor)
    told: list[list[tuple[object, ...]]] = [[], []]
    try:
        for t in range(60):
            batch = fleet_history(t)
            await kept.store(batch)
            await anew.store(batch)
            held = {c: T0 + t for c in "abcdef" if not (50 <= t < 55 and c == "c")}
            gone = {"c": T0 + 49} if t == 50 else {}
            memos = []
            for n, (store, fleet) in enumerate(
                [(kept, kept.fleet), (anew, SQLFleet(anew.pool, anew.url.dialect))]
            ):
                # Another server, holding no client, is the only one to decide from 30 to
                # 34 (it takes over at 33, once s1 has not decided for 3 s); s1 then takes
                # over again at 38.
                server = "s2" if 30 <= t < 35 else "s1"
                if server == "s2" and store is kept:
                    fleet = other.fleet
                mine = (held, gone) if server == "s1" else ({}, {})
                events = await fleet.decide(server, T0 + t + 0.5, *mine, thresholds)
                told[n] += [(e.id, e.client, e.state, e.event, e.since, e.head, e.best_head,
                             e.text) for e in events]  # fmt: skip
                memos.append(fleet.memo)
            assert told[0] == told[1], t
            # What each read of the facts: the same, whichever way.
            assert await kept.fleet.states() == await anew.fleet.states()
            kept_memo, fresh = memos
            assert (kept_memo is None) == (fresh is None) == (t in (30, 31, 32, 35, 36, 37)), t
            if kept_memo is None or fresh is None:
                continue
            assert kept_memo.reported == fresh.reported, t
            assert {c: {n: h.reports for n, h in heights.items()}
                    for c, heights in kept_memo.contested.items()} == {
                c: {n: h.reports for n, h in heights.items()}
                for c, heights in fresh.contested.items()}, t  # fmt: skip
    finally:
        await other.close()
    assert {(c, s) for _, c, s, event, *_ in told[0] if event == "entered"} >= {
        ("d", "fork"),
        ("e", "behind"),
        ("f", "stalled"),
        ("b", "syncing"),
        ("c", "silent"),
    }


@pytest_twisted.ensureDeferred
async def test_states_of_some_clients_are_theirs_of_all(open_store: Opener) -> None:
    """
    C{states(clients)} gives, of the watched clients among C{clients}, what C{states()} gives
    for them: a client in no state as current, unwatched and unknown names left out, over more
    names than one statement asks for.
    """
    store = await started(open_store)
    await store.store([received("b", n, T0 + n) for n in range(0, 21)])
    await store.store([received("a", n, T0 + n) for n in range(0, 11)])
    await store.store([received("old", 20, T0 + 20)])
    await store.fleet.decide("s", T0 + 45, {"a": T0 + 44, "b": T0 + 44}, {}, T)
    everyone = await store.fleet.states()
    assert set(everyone) == {"a", "b"} and set(everyone["a"]) == {"behind"}
    asked = ["a", "old", "never", *(f"x{i}" for i in range(600))]
    assert await store.fleet.states(asked) == {"a": everyone["a"]}
    assert await store.fleet.states(["b", "a"]) == everyone
    assert await store.fleet.states([]) == {}
