"""
Webhooks against real HTTP receivers (twisted.web on loopback ports): one that answers, one
that is down at first, one that fails, one that hangs; the order, the retries, the
signature, the queue's bound, and no secret of a URL in the logs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest
import pytest_twisted
from twisted.logger import LogLevel, capturedLogs, formatEvent
from zope.interface.verify import verifyObject

from ethtwisted.interfaces import IEventSink
from ethtwisted.server.webhooks import WebhookService, event_body, parse_webhook_url
from tests.helpers import the_reactor, wait_for
from tests.services import free_port
from tests.webhooks import FAST_RETRY, Running, event, receiver, url

SECRET = b"hmac-secret-of-the-test"


async def stopped(service: WebhookService) -> None:
    service.stopService()
    for target in service.targets:
        assert target.retry is None
        if target.sending is not None:
            await wait_for(lambda t=target: t.sending is None, what="the delivery to end")  # type: ignore[misc]


@pytest_twisted.ensureDeferred
async def test_events_arrive_in_order_signed_with_their_fields(
    receivers: list[Running],
) -> None:
    """
    Each event is POSTed once to every URL, in the order published, as JSON with exactly the
    event's fields, signed with HMAC-SHA256 of the body; the URL's user and password become a
    Basic authorization, its path and query are kept.
    """
    one, two = receiver(receivers), receiver(receivers)
    await one.start()
    await two.start()
    urls = [
        parse_webhook_url(f"http://user:pa%3Ass@127.0.0.1:{one.port}/a/b?key=k1"),
        url(two),
    ]
    service = WebhookService(the_reactor(), urls, secret=SECRET, retry_policy=lambda _: 1.0)
    assert verifyObject(IEventSink, service)
    service.startService()
    events = [event(n, client) for n in range(1, 7) for client in ("node-a", "node-b")]
    for e in events:
        service.publish(e)
    await wait_for(lambda: len(one.receiver.requests) == len(two.receiver.requests) == 12,
                   what="every event at both receivers")  # fmt: skip
    for running in (one, two):
        bodies = [body for _, body in running.receiver.requests]
        assert bodies == [event_body(e) for e in events]
        for headers, body in running.receiver.requests:
            expected = hmac.new(SECRET, body, hashlib.sha256).hexdigest()
            assert headers[b"x-ethtwisted-signature"] == f"sha256={expected}".encode()
            assert headers[b"content-type"] == b"application/json"
    assert json.loads(one.receiver.requests[0][1]) == {
        "id": 1, "client": "node-a", "chain_id": 1, "state": "behind", "event": "entered",
        "head": 101, "best_head": 111, "since": 1_700_000_001.0, "at": 1_700_000_031.0,
        "text": "node-a is 10 blocks behind (1)",
    }  # fmt: skip
    headers = one.receiver.requests[0][0]
    assert headers[b"authorization"] == b"Basic " + base64.b64encode(b"user:pa:ss")
    assert b"authorization" not in two.receiver.requests[0][0]
    await stopped(service)


@pytest_twisted.ensureDeferred
async def test_a_receiver_down_then_failing_gets_every_event_in_order(
    receivers: list[Running],
) -> None:
    """
    While the receiver is down, and while it answers 503, the events wait and the first is
    retried with backoff (said once per reason, and once when it works again); then every
    event arrives, in order, none lost.  Without a secret there is no signature.
    """
    down = receiver(receivers, statuses=[503, 503])
    attempts: list[int] = []

    def policy(attempt: int) -> float:
        attempts.append(attempt)
        return FAST_RETRY

    service = WebhookService(the_reactor(), [url(down)], retry_policy=policy)
    with capturedLogs() as logged:
        service.startService()
        for n in range(1, 4):
            service.publish(event(n))
        await wait_for(lambda: len(attempts) >= 3, what="three retries while down")
        await down.start()
        await wait_for(lambda: down.receiver.ids[-3:] == [1, 2, 3] if down.receiver.ids else False,
                       what="every event after the outage")  # fmt: skip
    ids = down.receiver.ids
    assert ids[:3] == [1, 1, 1]  # two 503s, then accepted
    assert ids[2:] == [1, 2, 3]
    assert attempts[:3] == [0, 1, 2]
    assert b"x-ethtwisted-signature" not in down.receiver.requests[0][0]
    texts = [formatEvent(e) for e in logged if e["log_level"] >= LogLevel.info]
    refused = [t for t in texts if "delivery failed" in t and "refused" in t.lower()]
    assert len(refused) == 1, texts
    assert sum("delivery failed (status 503)" in t for t in texts) == 1, texts
    assert sum("delivering again" in t for t in texts) == 1, texts
    await stopped(service)


@pytest_twisted.ensureDeferred
async def test_a_hanging_receiver_times_out_and_the_event_is_sent_again(
    receivers: list[Running],
) -> None:
    """
    A receiver that never answers costs the attempt its timeout, then the same event is sent
    again (at least once), and the ones after it follow in order.
    """
    hanging = receiver(receivers, hang=1)
    await hanging.start()
    service = WebhookService(
        the_reactor(), [url(hanging)], timeout=0.3, retry_policy=lambda _: FAST_RETRY
    )
    with capturedLogs() as logged:
        service.startService()
        service.publish(event(1))
        service.publish(event(2))
        await wait_for(lambda: hanging.receiver.ids == [1, 1, 2], what="the event again, then 2")
    texts = [formatEvent(e) for e in logged]
    assert any("timed out after 0.3 s" in t for t in texts), [t for t in texts if "webhook" in t]
    await stopped(service)


@pytest_twisted.ensureDeferred
async def test_a_full_queue_drops_the_oldest_and_says_so_once(receivers: list[Running]) -> None:
    """
    With the receiver down, a queue of 3 keeps the newest 3 events: the oldest are dropped,
    said once, and once more when it has caught up; the receiver then gets those 3 in order.
    A receiver refusing an event (a 4xx) has it dropped, not retried.
    """
    later = receiver(receivers, statuses=[400])
    service = WebhookService(
        the_reactor(), [url(later)], max_queue=3, retry_policy=lambda _: FAST_RETRY
    )
    with capturedLogs() as logged:
        for n in range(1, 9):
            service.publish(event(n))  # not started yet: they wait
        assert len(service.targets[0].queue) == 3
        await later.start()
        service.startService()
        await wait_for(lambda: later.receiver.ids == [6, 7, 8], what="the newest three")
        await wait_for(lambda: not service.targets[0].queue, what="the queue to empty")
    texts = [formatEvent(e) for e in logged]
    assert sum("dropping the oldest" in t for t in texts) == 1, texts
    assert sum("5 events were dropped" in t for t in texts) == 1, texts
    assert sum("refused an event with status 400" in t for t in texts) == 1, texts
    await stopped(service)


@pytest_twisted.ensureDeferred
async def test_stopping_cancels_retries_and_keeps_the_events(receivers: list[Running]) -> None:
    """
    Stopping the service cancels a waiting retry and the delivery under way; the events stay
    queued, and the service delivers them when started again.
    """
    late = receiver(receivers, hang=1)
    service = WebhookService(the_reactor(), [url(late)], retry_policy=lambda _: 30.0)
    service.startService()
    service.publish(event(1))
    await wait_for(lambda: service.targets[0].retry is not None, what="a retry waiting")
    await stopped(service)
    await late.start()
    service.startService()
    await wait_for(lambda: late.receiver.hanging != [], what="the event sent again")
    await stopped(service)
    assert len(service.targets[0].queue) == 1


@pytest.mark.parametrize(
    "bad",
    [
        "ftp://user:secret@127.0.0.1/x",
        "http:///secret-path",
        "http://127.0.0.1:99999/secret",
        "http://127.0.0.1/sec ret",
        "http://127.0.0.1/secrét",
        "http://127.0.0.1/" + "secret" * 400,
    ],
)
def test_bad_urls_are_refused_without_quoting_them(bad: str) -> None:
    """
    A webhook is an http(s) URL with a host, ASCII, without spaces, of bounded length; the
    error for any other never quotes it.
    """
    with pytest.raises(ValueError) as caught:
        parse_webhook_url(bad)
    assert "secret" not in str(caught.value) and "secr" not in str(caught.value)


@pytest_twisted.ensureDeferred
async def test_logs_name_a_url_by_its_origin_only() -> None:
    """
    What is logged about a URL is its position and origin: never its user, password, path
    or query.
    """
    port = free_port()
    secret_url = f"http://user:pw-secret@127.0.0.1:{port}/path-secret?token=q-secret"
    parsed = parse_webhook_url(secret_url)
    assert parsed.origin == f"http://127.0.0.1:{port}"
    service = WebhookService(the_reactor(), [parsed], retry_policy=lambda _: FAST_RETRY)
    attempts = service.targets[0]
    with capturedLogs() as logged:
        service.startService()
        service.publish(event(1))
        await wait_for(lambda: attempts.attempt >= 2, what="two failed attempts")
    await stopped(service)
    text = "\n".join(formatEvent(e) + repr(e) for e in logged)
    assert f"webhook 1 (http://127.0.0.1:{port})" in text
    assert "secret" not in text


def test_the_default_retry_is_twisted_backoff() -> None:
    """
    Without a policy, retries back off as Twisted's backoffPolicy does: growing, capped at a
    minute.
    """
    service = WebhookService(the_reactor(), [parse_webhook_url("http://127.0.0.1:1/")])
    delays = [service.retry_policy(n) for n in range(40)]
    assert delays[0] < delays[5] < delays[10]
    assert max(delays) <= 61.0
