"""
The state events from their log to the webhooks (L{ethtwisted.server.feed}): one server at a
time delivers, from where the last one got to, so each event reaches a real HTTP receiver at
least once and in order across restarts, and exactly once while no server dies; on SQLite
and on MySQL (a private MariaDB), with real receivers.
"""

from __future__ import annotations

import pytest_twisted

from ethtwisted.records import StateEvent
from ethtwisted.server.feed import WebhookFeed, hook_id
from ethtwisted.server.webhooks import WebhookService
from ethtwisted.storage.sql_store import SQLStore
from tests.blocks import T0
from tests.fleet_reports import Opener, T, started
from tests.helpers import the_reactor, wait_for
from tests.webhooks import FAST_RETRY, Running, receiver, url


async def record_changes(store: SQLStore, clients: str, at: float) -> list[StateEvent]:
    """
    Two changes per client, recorded as a server deciding would: each falls silent (nobody
    holds it, last heard 100 s before C{at}), then is heard again (and so do the clients
    recorded before, which nobody holds any more).
    """
    fleet = store.fleet
    events = await fleet.decide("s", at - 100, {c: at - 100 for c in clients}, {}, T)
    events += await fleet.decide("s", at, {}, {}, T)
    events += await fleet.decide("s", at + 1, {c: at + 1 for c in clients}, {}, T)
    return events


@pytest_twisted.ensureDeferred
async def test_one_owner_at_a_time_from_where_the_last_got_to(open_store: Opener) -> None:
    """
    The first claim of a new set of webhooks starts at the latest event (no history sent) and
    holds it; another owner is refused while the lease runs, then takes over from what the
    first had settled; a release hands it on at once.
    """
    store = await started(open_store)
    deliveries = store.deliveries
    old = await record_changes(store, "a", T0)
    assert [(e.client, e.event) for e in old] == [("a", "entered"), ("a", "left")]
    assert await deliveries.claim("h", "one", T0, 10, None) == old[-1].id
    assert await deliveries.claim("h", "two", T0 + 1, 10, None) is None
    new = await record_changes(store, "b", T0 + 200)
    assert [e.id for e in await deliveries.pending(old[-1].id, 10)] == [e.id for e in new]
    assert await deliveries.claim("h", "one", T0 + 5, 10, new[0].id) == new[0].id
    assert await deliveries.claim("h", "two", T0 + 14, 10, None) is None  # renewed at T0 + 5
    assert await deliveries.claim("h", "two", T0 + 15.5, 10, None) == new[0].id
    assert await deliveries.claim("h", "one", T0 + 16, 10, new[1].id) is None
    await deliveries.release("h", "two", new[-1].id)
    assert await deliveries.claim("h", "one", T0 + 17, 10, None) == new[-1].id
    assert await deliveries.claim("other", "two", T0 + 17, 10, None) == new[-1].id
    assert await deliveries.pending(new[-1].id, 10) == []


def feed_for(store: SQLStore, running: Running, lease: float = 10.0) -> WebhookFeed:
    hooks = WebhookService(the_reactor(), [url(running)], retry_policy=lambda _: FAST_RETRY)
    hooks.startService()
    feed = WebhookFeed(
        the_reactor(), store.deliveries, hooks, hook_id([url(running)]), lease=lease
    )
    feed.startService()
    return feed


async def stop(feed: WebhookFeed) -> None:
    await feed.stopService()
    feed.webhooks.stopService()


@pytest_twisted.ensureDeferred
async def test_a_restarted_server_sends_what_was_not_delivered(
    open_store: Opener, receivers: list[Running]
) -> None:
    """
    Events recorded while the receiver is down are not lost when the server stops: the next
    run of it delivers them, in order, after the ones already delivered, none twice.
    """
    store = open_store()
    await store.start()
    hook = receiver(receivers)
    await hook.start()
    feed = feed_for(store, hook)
    await wait_for(lambda: feed.fed is not None, what="the first claim")
    first = await record_changes(store, "ab", T0)
    feed.publish(first[-1])
    await wait_for(lambda: hook.receiver.ids == [e.id for e in first], what="the first events")
    await hook.stop()
    later = await record_changes(store, "c", T0 + 300)
    feed.publish(later[-1])
    await wait_for(lambda: feed.fed == later[-1].id, what="the later events handed on")
    await stop(feed)
    await hook.start()
    again = feed_for(open_store(), hook)
    await wait_for(lambda: hook.receiver.ids[len(first):] == [e.id for e in later],
                   what="the later events after the restart")  # fmt: skip
    assert hook.receiver.ids == [e.id for e in first + later]
    await stop(again)


@pytest_twisted.ensureDeferred
async def test_two_servers_deliver_each_event_once_and_a_dead_ones_share_is_taken_over(
    open_store: Opener, receivers: list[Running]
) -> None:
    """
    Two servers feeding the same webhook deliver each event once in all, whichever recorded
    it; when the one delivering dies (its lease left to run out), the other delivers the rest,
    after what the dead one had not recorded as delivered.
    """
    hook = receiver(receivers)
    await hook.start()
    one, two = open_store(), open_store()
    await one.start()
    await two.start()
    lease = 1.0
    feeds = [feed_for(one, hook, lease), feed_for(two, hook, lease)]
    await wait_for(lambda: any(f.fed is not None for f in feeds), what="an owner")
    events = await record_changes(one, "ab", T0)
    events += await record_changes(two, "cd", T0 + 300)
    for feed in feeds:
        feed.publish(events[-1])
    await wait_for(lambda: hook.receiver.ids == [e.id for e in events], what="every event")
    (owner,) = [f for f in feeds if f.fed is not None]
    (other,) = [f for f in feeds if f is not owner]
    # Dies: stops feeding and delivering without handing on.
    await hook.stop()
    owner.fed = None
    await stop(owner)
    rest = await record_changes(two, "e", T0 + 600)
    await hook.start()
    await wait_for(lambda: hook.receiver.ids[-len(rest):] == [e.id for e in rest],
                   what="the rest, by the other server")  # fmt: skip
    # At least once: what the dead server had delivered but not yet recorded comes again, in
    # order, before the rest.
    again = hook.receiver.ids[len(events) : -len(rest)]
    assert again == [e.id for e in events][len(events) - len(again) :]
    assert other.fed == rest[-1].id
    await stop(other)
