"""
The fleet view's decision (L{ethtwisted.states.decide}) on facts given by hand: each state begins
at its threshold and not before, ends when its cause does, and a tie at a contested height
calls no side the fork.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ethtwisted.states import (
    RECONNECT_GRACE,
    ChainFacts,
    ClientFacts,
    State,
    Thresholds,
    decide,
    describe_change,
    fleet_block,
)

T = Thresholds(behind_blocks=3, behind_seconds=30, stall_seconds=60, silent_seconds=60,
               fork_seconds=30)  # fmt: skip
NOW = 1_700_000_000.0


def client(name: str = "a", **kw: object) -> ClientFacts:
    values: dict[str, object] = dict(
        client=name, last_frame=NOW, connected=True, gone_at=None, chain_id=1, head=100,
        head_at=NOW - 1, syncing=False,
    )  # fmt: skip
    values.update(kw)
    return ClientFacts(**values)  # type: ignore[arg-type]


def chain(best: int = 100, best_at: float = NOW - 1, **kw: object) -> dict[int, ChainFacts]:
    return {1: ChainFacts(1, best, best_at, **kw)}  # type: ignore[arg-type]


def test_current_client_is_in_no_state() -> None:
    """A client at the best head, just heard from, connected: in no state at all."""
    assert decide([client()], chain(), T, NOW) == {}


def test_behind_begins_after_behind_seconds_past_the_height_that_made_it() -> None:
    """
    Behind: its head more than C{behind_blocks} below the best head, for longer than
    C{behind_seconds} since the fleet reached the height C{head + behind_blocks + 1}.
    """
    reached_at = NOW - 30
    facts = client(head=96)
    chains = chain(best=101, reached={100: reached_at})
    assert decide([facts], chains, T, NOW) == {}  # exactly 30 s: not yet
    later = decide([facts], chains, T, NOW + 0.5)
    assert later == {"a": {"behind": State("behind", reached_at, 1, 96, 101)}}
    # Three blocks behind is not more than three.
    assert decide([client(head=97)], chain(best=100, reached={101: NOW - 99}), T, NOW) == {}


def test_stalled_needs_the_chain_to_have_gone_on() -> None:
    """
    Stalled: no new head for over C{stall_seconds} while the best head advanced after its last
    one; a quiet chain stalls nobody.
    """
    facts = client(head=100, head_at=NOW - 61)
    assert decide([facts], chain(best=100, best_at=NOW - 200), T, NOW) == {}
    assert decide([facts], chain(best=101, best_at=NOW - 62), T, NOW) == {}  # before its head
    states = decide([facts], chain(best=101, best_at=NOW - 10), T, NOW)
    assert states == {"a": {"stalled": State("stalled", NOW - 61, 1, 100, 101)}}
    assert decide([replace(facts, head_at=NOW - 59)], chain(best=101), T, NOW) == {}


def test_silent_when_unheard_or_without_connection_past_the_grace() -> None:
    """
    Silent: nothing heard for over C{silent_seconds}, or no connection for over
    L{RECONNECT_GRACE} (one back within it, after a failover or a restart, is not).
    """
    assert decide([client(last_frame=NOW - 60)], chain(), T, NOW) == {}
    unheard = decide([client(last_frame=NOW - 61)], chain(), T, NOW)
    assert unheard["a"]["silent"].since == NOW - 61
    gone = client(last_frame=NOW - 2, connected=False, gone_at=NOW - 2)
    assert decide([gone], chain(), T, NOW) == {}
    later = decide([gone], chain(), T, NOW - 2 + RECONNECT_GRACE + 0.1)
    assert set(later["a"]) == {"silent"}


def test_syncing_as_the_node_says() -> None:
    """Syncing: what its node said in its latest status, from now."""
    assert decide([client(syncing=True)], chain(), T, NOW) == {
        "a": {"syncing": State("syncing", NOW, 1, 100, 100)}
    }


def test_fork_against_the_majority_for_fork_seconds() -> None:
    """
    Fork: at a contested height its block is not the one most clients report there, for over
    C{fork_seconds} since it saw it; the majority's clients are not on a fork.
    """
    contested = {99: {"a": ("0xaa", NOW - 40), "b": ("0xbb", NOW - 41), "c": ("0xbb", NOW - 41)}}
    chains = chain(contested=contested)
    facts = [client("a"), client("b"), client("c")]
    states = decide(facts, chains, T, NOW)
    assert states == {"a": {"fork": State("fork", NOW - 40, 1, 100, 100)}}
    assert decide(facts, chains, T, NOW - 10.5) == {}


def test_a_tie_calls_nobody_a_fork() -> None:
    """Two clients, two blocks at a height: neither is the fleet's, neither is on a fork."""
    contested = {99: {"a": ("0xaa", NOW - 400), "b": ("0xbb", NOW - 400)}}
    assert decide([client("a"), client("b")], chain(contested=contested), T, NOW) == {}
    assert fleet_block({"a": ("0xaa", 0.0), "b": ("0xbb", 0.0)}) is None
    assert fleet_block({"a": ("0xaa", 0.0)}) == "0xaa"


def test_several_states_at_once() -> None:
    """A node that is syncing, far behind and not heard from is in all three states."""
    facts = client(head=10, head_at=NOW - 30, last_frame=NOW - 100, syncing=True)
    states = decide([facts], chain(best=100, best_at=NOW - 5, reached={14: NOW - 500}), T, NOW)
    assert set(states["a"]) == {"behind", "silent", "syncing"}


def test_unknown_chain_or_head_is_judged_on_presence_alone() -> None:
    """A client that reported no block yet can only be silent or syncing."""
    facts = client(chain_id=None, head=None, head_at=None, last_frame=NOW - 100)
    assert set(decide([facts], chain(), T, NOW)["a"]) == {"silent"}


@pytest.mark.parametrize("event", ["entered", "left"])
def test_the_text_names_client_state_and_heads(event: str) -> None:
    """The line for people names the client, the state and where it and its chain were."""
    text = describe_change("node-7", State("behind", NOW - 40, 1, 96, 120), event, NOW)
    assert "node-7" in text and "behind" in text and "96" in text and "120" in text
    assert ("no longer" in text) == (event == "left")


@pytest.mark.property
@given(
    head=st.integers(0, 10_000),
    ahead=st.integers(0, 50),
    behind_blocks=st.integers(0, 10),
    age=st.floats(0, 100),
)
def test_behind_exactly_when_both_thresholds_are_passed(
    head: int, ahead: int, behind_blocks: int, age: float
) -> None:
    """For any head, lag and age: behind iff the lag is over the blocks and the age over the
    seconds."""
    thresholds = replace(T, behind_blocks=behind_blocks)
    height = head + behind_blocks + 1
    chains = chain(best=head + ahead, best_at=NOW, reached={height: NOW - age})
    states = decide([client(head=head, head_at=NOW)], chains, thresholds, NOW)
    expected = ahead > behind_blocks and age > T.behind_seconds
    assert ("behind" in states.get("a", {})) == expected
