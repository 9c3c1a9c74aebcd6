"""
The fleet view in the JSON API: C{/api/v1/events} (each change of a client's state, newest
first) and the states shown in each client's entry.  A store without the fleet view (the
memory store) lists no events and watches no client.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from twisted.web.server import Request

from ethtwisted.frames import name_problem
from ethtwisted.states import State
from ethtwisted.web.reads import Reads
from ethtwisted.web.resource import (
    HTTPError,
    Response,
    int_arg,
    json_response,
    query_arg,
    time_arg,
)

DEFAULT_EVENTS = 100
MAX_EVENTS = 1000

EXPLAINING = ("silent", "syncing", "fork", "stalled", "behind")
"""The states in the order in which one explains those after it (a silent client's head
stalls, and a stalled one falls behind): a client's C{state} is the first it is in."""


def state_fields(states: Mapping[str, State] | None) -> dict[str, Any]:
    """
    The fields of a client's entry that say its states: C{states} (state → since when, its
    head and its chain's best head then) and C{state} (C{current} in none, else the one that
    explains the others); both L{None} for a client the fleet view does not watch.
    """
    if states is None:
        return {"state": None, "states": None}
    shown = {
        name: {"since": s.since, "chain_id": s.chain_id, "head": s.head, "best_head": s.best_head}
        for name, s in states.items()
    }
    main = next((name for name in EXPLAINING if name in states), "current")
    return {"state": main, "states": shown}


async def events(reads: Reads, request: Request, rest: list[str]) -> Response:
    """
    C{/api/v1/events?since=&client=&limit=}: the latest changes of state, newest first, each
    with the fields of the webhook's body.
    """
    if rest:
        raise HTTPError(404, "not found")
    since = time_arg(request, "since")
    client = query_arg(request, "client")
    if client is not None:
        problem = name_problem(client)
        if problem is not None:
            raise HTTPError(400, f"client {problem}")
    limit = int_arg(request, "limit", DEFAULT_EVENTS, MAX_EVENTS)
    if reads.fleet is None:
        raise HTTPError(404, "this store keeps no fleet view")
    listed = await reads.read(reads.fleet.events(since, client, limit))
    return json_response(
        {
            "now": reads.reactor.seconds(),
            "since": since,
            "client": client,
            "limit": limit,
            "events": [asdict(e) for e in listed],
        }
    )
