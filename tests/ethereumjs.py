"""
EthereumJS (``@ethereumjs/client`` from npm), a peer-to-peer execution client that no one here
wrote, as nodes of a clique (proof-of-authority) network of their own on loopback.

- ``CliqueNetwork``: a genesis with one signer, and the nodes started on it: ``sealer()``
  seals a block every ``period`` seconds, ``follower(sealer)`` syncs from it over devp2p;
  ``stop()`` ends them all.
- ``EthereumJS``: one node, JSON-RPC over HTTP on ``port`` and WebSocket on ``ws_port``,
  devp2p on ``p2p_port``, its chain and node key in its own folder; ``rpc()``, ``blocks()``,
  ``stop_sealing()``.

Clique headers carry the signer's seal in ``extraData`` (97 bytes, where Ethereum's mainnet
allows 32), and EthereumJS answers ``eth_subscribe`` with "method not found" and closes idle
HTTP connections: a real node unlike the dev nodes.  As a follower it keeps up with no fast
chain: it learns of new blocks from its peer's announcements only while it is at most one block
behind, and otherwise guesses the peer's head as one block per 12 s (the mainnet slot); a
follower started once the sealer stopped sealing catches up in one sync, 5 to 25 s later: its
sync loop looks for a peer every 5 s, and a request that crosses another on the same peer waits
out its 8 s timeout.

Its devp2p port listens on every interface (EthereumJS 0.10.5 takes no address for it); each
connection made here is on 127.0.0.1.  Nothing here imports pytest (tests/conftest.py wraps
these in fixtures).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eth_account import Account

from ethtwisted.protocol import Block
from tests.services import (
    REPO_ROOT,
    Service,
    ServiceError,
    find_binary,
    free_port,
    http_rpc,
)

CHAIN_ID = 7357
"""The clique network's chain id: one of its own, not anvil's 31337."""
PERIOD = 2
"""Seconds between the sealer's blocks."""
SIGNER_KEY = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
"""The signer's private key: the first of the well-known development keys, never for value."""
HARDFORKS = ("homestead", "eip150", "eip155", "eip158", "byzantium", "constantinople",
             "petersburg", "istanbul", "berlin", "london")  # fmt: skip
SEAL_BYTES = 65
VANITY_BYTES = 32


def ethereumjs_binary() -> str:
    """Locate the EthereumJS command that npm installed under node_modules/."""
    return find_binary("ethereumjs", [REPO_ROOT / "node_modules" / ".bin" / "ethereumjs"])


def clique_genesis(signer: str, period: int = PERIOD, chain_id: int = CHAIN_ID) -> dict[str, Any]:
    """
    A geth-style genesis of a clique network whose one signer is C{signer} (0x-address): every
    fork up to London at block 0, the signer listed in C{extraData} between 32 bytes of vanity
    and 65 of (empty) seal, the signer funded.
    """
    address = signer.removeprefix("0x").lower()
    config: dict[str, Any] = {f"{fork}Block": 0 for fork in HARDFORKS}
    config.update(chainId=chain_id, clique={"period": period, "epoch": 30000})
    return {
        "config": config,
        "nonce": "0x0",
        "timestamp": hex(int(time.time())),
        "extraData": "0x" + "00" * VANITY_BYTES + address + "00" * SEAL_BYTES,
        "gasLimit": hex(30_000_000),
        "difficulty": "0x1",
        "mixHash": "0x" + "00" * 32,
        "coinbase": "0x" + "00" * 20,
        "alloc": {address: {"balance": hex(10**18)}},
        "number": "0x0",
        "gasUsed": "0x0",
        "parentHash": "0x" + "00" * 32,
        "baseFeePerGas": hex(10**9),
    }


def _port_open(port: int) -> None:
    """Raise L{OSError} unless something accepts TCP connections on C{port} of 127.0.0.1."""
    with socket.create_connection((EthereumJS.host, port), timeout=1):
        pass


class EthereumJS(Service):
    """
    One EthereumJS node of the network of C{genesis}: the sealer when given C{key_file} (the
    signer's key, hex without 0x), else a follower of C{bootnodes} (enode URLs).

    Its graceful stop waits seconds for its sync loop, so C{stop()} kills it: its folder is a
    test's, thrown away.
    """

    def __init__(
        self,
        workdir: Path,
        genesis: Path,
        key_file: Path | None = None,
        bootnodes: Sequence[str] = (),
        name: str = "ethereumjs",
        binary: str | None = None,
    ) -> None:
        super().__init__(name, workdir)
        self.genesis = genesis
        self.key_file = key_file
        self.bootnodes = list(bootnodes)
        self.signer = key_file is not None
        """Whether its chain is the network's, as the sealer's is (sealing or no longer)."""
        self.ws_port = 0
        self.p2p_port = 0
        self.enode = ""
        self._binary = binary or ethereumjs_binary()

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.ws_port}"

    def choose_ports(self) -> None:
        self.port, self.ws_port, self.p2p_port = free_port(), free_port(), free_port()

    def _argv(self) -> list[str]:
        argv = [
            self._binary,
            "--gethGenesis", str(self.genesis),
            "--dataDir", str(self.workdir / "data"),
            "--rpc", "--rpcAddr", self.host, "--rpcPort", str(self.port),
            "--ws", "--wsAddr", self.host, "--wsPort", str(self.ws_port),
            "--port", str(self.p2p_port), "--extIP", self.host,
            "--discV4", "false", "--discDns", "false", "--logFile", "false",
        ]  # fmt: skip
        if self.key_file is not None:
            argv += ["--mine", "--unlock", str(self.key_file)]
        if self.signer:
            # No peer to learn the chain's height from: the chain is its own.
            argv.append("--isSingleNode")
        if self.bootnodes:
            argv += ["--bootnodes", ",".join(self.bootnodes)]
        return argv

    def _ready(self) -> None:
        info = self.rpc("admin_nodeInfo")
        _port_open(self.ws_port)
        self.enode = str(info["enode"])

    def stop(self) -> None:
        self.kill()

    def stop_sealing(self) -> None:
        """
        Kill the sealer and start it again on the same folder and ports, not sealing: the
        network's one signer is gone, its chain ends at the head it had, which the node still
        serves (with the same node key, so the same enode).
        """
        if self.key_file is None:
            raise ServiceError(f"{self.name} does not seal")
        self.key_file = None
        self.restart()

    def rpc(self, method: str, *params: Any) -> Any:
        """Call one JSON-RPC method over HTTP (blocking) and return its result."""
        return http_rpc(self.http_url, method, params)

    def block_number(self) -> int:
        return int(self.rpc("eth_blockNumber"), 16)

    def peers(self) -> int:
        return int(self.rpc("net_peerCount"), 16)

    def blocks(self) -> list[Block]:
        """The node's chain, from genesis to its head."""
        head = self.block_number()
        chain = []
        for number in range(head + 1):
            header = self.rpc("eth_getBlockByNumber", hex(number), False)
            chain.append(
                Block(CHAIN_ID, number, header["hash"], header["parentHash"],
                      int(header["timestamp"], 16))
            )  # fmt: skip
        return chain


class CliqueNetwork:
    """
    A clique network of EthereumJS nodes under C{workdir}: one genesis, one signer (the fixed
    test key), the nodes started on it; C{stop()} ends them all.
    """

    def __init__(self, workdir: Path, period: int = PERIOD) -> None:
        self.workdir = workdir
        self.binary = ethereumjs_binary()
        self.signer = Account.from_key("0x" + SIGNER_KEY).address
        # The file's name, without its suffix, names the network (and its folder in a node's).
        self.genesis = workdir / "clique.json"
        self.genesis.write_text(json.dumps(clique_genesis(self.signer, period)))
        self.key_file = workdir / "signer.key"
        fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as key:
            key.write(SIGNER_KEY)
        self.nodes: list[EthereumJS] = []

    def _start(self, name: str, key_file: Path | None, bootnodes: Sequence[str]) -> EthereumJS:
        folder = self.workdir / name
        folder.mkdir()
        node = EthereumJS(folder, self.genesis, key_file, bootnodes, name, self.binary)
        self.nodes.append(node)
        node.start_on_free_port()
        return node

    def sealer(self, name: str = "sealer") -> EthereumJS:
        """A node sealing a block every period with the signer's key, once it answers."""
        return self._start(name, self.key_file, ())

    def follower(self, of: EthereumJS, name: str = "follower") -> EthereumJS:
        """A node syncing from C{of} over devp2p, once it answers (not peered yet, maybe)."""
        return self._start(name, None, [of.enode])

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
