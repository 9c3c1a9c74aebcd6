"""
The real eth-server with clients that list features: welcomed and pinged over loopback, their
sightings corrected for clocks that are seconds off, their node status stored, all read back
through the stats API; and a client of before beside them, which gets nothing new.
"""

from __future__ import annotations

from pathlib import Path

import pytest_twisted
import treq

from ethtwisted.frames import Ack, ControlFrame, Hello, Ping, Pong, Sighting, Status, Welcome
from ethtwisted.protocol import block_json, payload_hash
from tests.blocks import block
from tests.helpers import Peer, connect, connect_peer, start_server, the_reactor, wait_for

FEATURES = ("status", "sighting", "ping")


class ShiftedPeer(Peer):
    """
    A client of today whose clock is C{shift} seconds off the server's: it answers pings and
    dates its sightings on that clock.
    """

    def __init__(self, name: str, shift: float) -> None:
        super().__init__(name)
        self.shift = shift
        self.frames: list[ControlFrame] = []
        self.pongs = 0

    def now_ms(self) -> int:
        return int((the_reactor().seconds() + self.shift) * 1000)

    def connectionMade(self) -> None:
        self.send_control(Hello(self.name or "", features=FEATURES))

    def controlReceived(self, frame: ControlFrame) -> None:
        self.frames.append(frame)
        if isinstance(frame, Ping):
            self.send_control(Pong(frame.id, self.now_ms()))
            self.pongs += 1
        elif not isinstance(frame, Welcome):
            super().controlReceived(frame)

    def sight(self, payload: bytes) -> None:
        self.send_control(Sighting(payload_hash(payload), self.now_ms(), "subscription"))
        self.send([payload])


@pytest_twisted.ensureDeferred
async def test_shifted_clocks_still_give_delays_under_100_ms(tmp_path: Path) -> None:
    """
    Two clients whose clocks are 7 s ahead and 5 s behind the server's see each block at the
    same moment: the block's sightings, corrected by the offsets the server estimated, are
    under 100 ms apart, and each client's propagation says so; their status reports show in
    /api/v1/clients; a client without features beside them is only ever acknowledged.
    """
    server = await start_server(
        ["--db", f"sqlite:///{tmp_path}/eth.sqlite", "--stats", "tcp:0:interface=127.0.0.1"]
    )
    try:
        ahead = await connect(server.port, ShiftedPeer("ahead", 7.0))
        behind = await connect(server.port, ShiftedPeer("behind", -5.0))
        old = await connect_peer(server.port, "old")
        await wait_for(lambda: ahead.pongs >= 2 and behind.pongs >= 2, what="pongs")
        assert ahead.frames[0] == Welcome(FEATURES)
        ahead.send_control(Status(client_version="anvil/1", chain_id=31337, peers=0))
        payloads = [block_json(block(31337, n)) for n in range(1, 6)]
        for payload in payloads:
            ahead.sight(payload)
            behind.sight(payload)
        await old.send(payloads)
        await wait_for(lambda: len(ahead.acked) == len(behind.acked) == 5, what="acks")
        assert all(isinstance(f, Ack) for f in ahead.frames if not isinstance(f, Ping | Welcome))

        base = server.stats_url
        for payload in payloads:
            body = await (await treq.get(f"{base}/api/v1/blocks/{payload_hash(payload)}")).json()
            seen = {s["client"]: s for s in body["sightings"]}
            assert {seen["ahead"]["via"], seen["behind"]["via"]} == {"subscription"}
            assert abs(seen["ahead"]["seen_at"] - seen["behind"]["seen_at"]) < 0.1, body
            assert seen["old"]["via"] == "unknown"
        body = await (await treq.get(f"{base}/api/v1/clients")).json()
        clients = {c["client"]: c for c in body["clients"]}
        for name in ("ahead", "behind"):
            propagation = clients[name]["propagation"]
            assert propagation["blocks"] == 5 and propagation["p95_ms"] < 100, propagation
        node = clients["ahead"]["node"]
        assert (node["client_version"], node["peers"], node["syncing"]) == ("anvil/1", 0, None)
        assert clients["behind"]["node"] is None
        assert len(old.acked) == 5  # and nothing else: Peer takes only acks
    finally:
        for peer in (ahead, behind, old):
            peer.close()
        await server.stop()
