"""
eth-client for real: an anvil node over IPC, WebSocket and HTTP, the real eth-server on
loopback storing into SQLite, and restarts of each of them.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import pytest_twisted
from twisted.logger import capturedLogs, formatEvent

from tests.e2e import (
    assert_chain_stored_once,
    node_hashes,
    reorganised,
    sleep,
    sqlite_file,
    start_client,
    stored_blocks,
    uri_of,
)
from tests.helpers import TIMEOUT, Committed, Server, wait_for
from tests.services import Anvil
from tests.twistd import twistd_client, twistd_client_fails

TRANSPORTS = ["ipc", "ws", "http"]


# -- every transport --------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest_twisted.ensureDeferred
async def test_every_block_reaches_sql_once(
    anvil: Anvil, server: tuple[Server, Committed], transport: str
) -> None:
    """
    Over each transport, node to client to server to SQL: every block from genesis to the
    head, mined one at a time and in jumps, is stored exactly once, with the node's hashes.
    """
    srv, committed = server
    client = start_client(uri_of(anvil, transport), srv.port)
    try:
        await committed.wait_for(node_hashes(anvil).values())
        for _ in range(3):
            anvil.mine()
            await sleep(0.1)
        anvil.mine(7)
        anvil.mine()
        await committed.wait_for(node_hashes(anvil).values())
    finally:
        await client.stopService()
    assert anvil.block_number() == 11
    assert_chain_stored_once(srv, anvil)
    assert len(client.outbox) == 0


@pytest_twisted.ensureDeferred
async def test_oneshot_delivers_every_block(
    anvil: Anvil, server: tuple[Server, Committed]
) -> None:
    """
    With C{--oneshot} (a connection per message, as to an older server), every block still
    reaches SQL once.
    """
    srv, committed = server
    client = start_client(anvil.ipc_path, srv.port, "--oneshot")
    try:
        await committed.wait_for(node_hashes(anvil).values())
        anvil.mine(4)
        anvil.mine()
        await committed.wait_for(node_hashes(anvil).values())
    finally:
        await client.stopService()
    assert_chain_stored_once(srv, anvil)
    assert len(client.outbox) == 0


# -- restarts ---------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_server_stopped_while_blocks_are_mined_loses_nothing(
    anvil: Anvil, server: tuple[Server, Committed]
) -> None:
    """
    Blocks mined while the server is down are kept by the client and stored once the server
    is back on the same port.
    """
    srv, committed = server
    client = start_client(anvil.ws_url, srv.port)
    try:
        await committed.wait_for(node_hashes(anvil).values())
        anvil.mine(2)
        await committed.wait_for(node_hashes(anvil).values())
        await srv.stop()
        for _ in range(5):
            anvil.mine()
            await sleep(0.1)
        await wait_for(lambda: len(client.outbox) >= 5)
        restarted = await srv.restart()
        try:
            await committed.wait_for(node_hashes(anvil).values())
        finally:
            await restarted.stop()
    finally:
        await client.stopService()
    assert_chain_stored_once(srv, anvil)


def spool_head(spool: Path) -> int | None:
    try:
        state = json.loads((spool / "state.json").read_text())
    except (OSError, ValueError):
        return None
    return int(state["last"]["number"]) if state.get("last") else None


@pytest_twisted.ensureDeferred
async def test_client_killed_and_restarted_with_spool_loses_nothing(
    anvil: Anvil, server: tuple[Server, Committed], tmp_path: Path
) -> None:
    """
    A client killed with SIGKILL while the server is down, holding unacknowledged blocks in its
    spool, sends them when restarted, and backfills the blocks mined while it was down.
    """
    srv, committed = server
    spool, log = tmp_path / "spool", tmp_path / "client.log"
    args = ["--node", anvil.ipc_path, "--server", f"tcp:host=127.0.0.1:port={srv.port}",
            "--interval", "0.05", "--spool", str(spool)]  # fmt: skip
    process = twistd_client(log, *args)
    try:
        await committed.wait_for(node_hashes(anvil).values())
        anvil.mine(2)
        await committed.wait_for(node_hashes(anvil).values())
        await srv.stop()
        for _ in range(4):
            head = anvil.mine()
            await sleep(0.1)
        await wait_for(lambda: spool_head(spool) == head, interval=0.05, what=log.read_text)
        process.send_signal(signal.SIGKILL)
        process.wait(TIMEOUT)
        anvil.mine(3)
        restarted = await srv.restart()
        process = twistd_client(log, *args)
        try:
            await committed.wait_for(node_hashes(anvil).values())
        finally:
            await restarted.stop()
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(TIMEOUT)
        if process.stdout is not None:
            process.stdout.close()
    assert_chain_stored_once(srv, anvil)


@pytest_twisted.ensureDeferred
async def test_sigterm_stops_polling_flushes_briefly_and_keeps_the_rest(
    anvil: Anvil, server: tuple[Server, Committed], tmp_path: Path
) -> None:
    """
    SIGTERM to C{twistd eth-client} while the server is down: the client stops within its
    flush timeout (and a margin), without a traceback, saying what it kept in the spool, where
    the blocks are.
    """
    srv, committed = server
    spool, log = tmp_path / "spool", tmp_path / "client.log"
    process = twistd_client(
        log, "--node", anvil.ws_url, "--server", f"tcp:host=127.0.0.1:port={srv.port}",
        "--interval", "0.05", "--spool", str(spool),
    )  # fmt: skip
    try:
        await committed.wait_for(node_hashes(anvil).values())
        await srv.stop()
        head = anvil.mine(3)
        await wait_for(lambda: spool_head(spool) == head, interval=0.05, what=log.read_text)
        process.send_signal(signal.SIGTERM)
        await wait_for(lambda: process.poll() is not None, 10, interval=0.05, what=log.read_text)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(TIMEOUT)
        if process.stdout is not None:
            process.stdout.close()
    assert process.returncode == -signal.SIGTERM  # twistd ends by the signal it was given
    text = log.read_text()
    assert "Traceback" not in text
    assert "3 unacknowledged messages kept in the spool" in text
    batches = [json.loads(p.read_text()) for p in sorted(spool.glob("batch-*.json"))]
    kept = [json.loads(payload)["number"] for b in batches for payload in b["payloads"]]
    assert kept == [1, 2, 3]


@pytest_twisted.ensureDeferred
async def test_client_stopped_gracefully_keeps_its_backlog_in_the_spool(
    anvil: Anvil, server: tuple[Server, Committed], tmp_path: Path
) -> None:
    """
    A client stopped (as by SIGTERM) while the server is down keeps what was not acknowledged
    in its spool; started again, it delivers it and what was mined meanwhile.
    """
    srv, committed = server
    spool = str(tmp_path / "spool")
    client = start_client(anvil.http_url, srv.port, "--spool", spool)
    await committed.wait_for(node_hashes(anvil).values())
    anvil.mine(2)
    await committed.wait_for(node_hashes(anvil).values())
    await srv.stop()
    anvil.mine(3)
    await wait_for(lambda: len(client.outbox) >= 3)
    client.flush_timeout = 0.2
    await client.stopService()
    anvil.mine(2)
    restarted = await srv.restart()
    client = start_client(anvil.http_url, srv.port, "--spool", spool)
    try:
        await committed.wait_for(node_hashes(anvil).values())
    finally:
        await client.stopService()
        await restarted.stop()
    assert_chain_stored_once(srv, anvil)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest_twisted.ensureDeferred
async def test_node_restart_is_ridden_out(
    anvil: Anvil, server: tuple[Server, Committed], transport: str
) -> None:
    """
    When the node restarts (on a new chain), the client says once that it went away and once
    that it is back, and follows the new chain.
    """
    srv, committed = server
    with capturedLogs() as events:
        client = start_client(uri_of(anvil, transport), srv.port)
        try:
            await committed.wait_for(node_hashes(anvil).values())
            anvil.mine(3)
            await committed.wait_for(node_hashes(anvil).values())
            anvil.stop()
            await wait_for(
                lambda: any("does not serve us" in formatEvent(e) for e in events),
                what="the client saying the node is gone",
            )
            anvil.start()
            # Past the old head: a new chain started within the same second can repeat the
            # old blocks' hashes (same timestamps, no transactions).
            anvil.mine(5)
            await committed.wait_for(node_hashes(anvil).values())
        finally:
            await client.stopService()
    texts = [formatEvent(e) for e in events]
    assert len([t for t in texts if "does not serve us" in t]) == 1
    assert len([t for t in texts if "answers again" in t]) == 1, texts
    assert not [e for e in events if "log_failure" in e]


@pytest_twisted.ensureDeferred
async def test_a_reorg_is_followed(anvil: Anvil, server: tuple[Server, Committed]) -> None:
    """
    After evm_revert to a snapshot and new blocks with other timestamps, the client walks back
    to the fork, logs the depth and sends the new canonical blocks.
    """
    srv, committed = server
    with capturedLogs() as events:
        client = start_client(anvil.ws_url, srv.port)
        try:
            await committed.wait_for(node_hashes(anvil).values())
            before, after = await reorganised(anvil, committed, 3, 3, 4)
            assert after[4] != before[4]
        finally:
            await client.stopService()
    reorgs = [formatEvent(e) for e in events if "reorg" in e.get("log_format", "")]
    assert len(reorgs) == 1 and "depth 3" in reorgs[0] and "after block 3" in reorgs[0]
    stored = stored_blocks(sqlite_file(srv))
    assert sorted(set(stored)) == stored
    assert set(stored) == set(before.items()) | set(after.items())


# -- the command line -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("twistd_args", "args", "message"),
    [
        (["--reactor=select"], [], "needs the asyncio reactor, not SelectReactor"),
        ([], ["--interval", "0.01"], "at least 0.05"),
        ([], ["--node", "localhost:8545"], "no scheme"),
        ([], ["--port", "99999"], "must be 1 to 65535, not 99999"),
        ([], ["--server", "tcp:host=127.0.0.1:port=99999"], "port 99999 is not 1 to 65535"),
    ],
)
def test_command_line_errors_end_with_one_line(
    tmp_path: Path, twistd_args: list[str], args: list[str], message: str
) -> None:
    """
    Under twistd, a non-asyncio reactor or a bad option ends the client at once with one line
    on stderr and a non-zero status, without a traceback.
    """
    lines = twistd_client_fails(*args, twistd_args=twistd_args)
    assert len(lines) == 1 and message in lines[0], lines
