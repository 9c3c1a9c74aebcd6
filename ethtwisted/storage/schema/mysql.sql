-- The older servers' table: each distinct payload once, under the SHA256 of its bytes.
CREATE TABLE IF NOT EXISTS ethereum_data (
    id INTEGER PRIMARY KEY AUTO_INCREMENT,
    hash VARCHAR(64) NOT NULL UNIQUE,
    payload TEXT
) DEFAULT CHARSET = utf8mb4;

-- When each payload was first seen, from which client, and what it says about a block; id is
-- the payload's id in ethereum_data, the sightings' short name for it (eth_blocks_id also gives
-- its number, which the propagation reads need).  ethtwisted.storage.migrate gives an older
-- table the column.
-- eth_blocks_chain holds all that the chain reads need, so they read it alone, in order of
-- height (rows are stored in the order of their random SHA256). sql_store.py gives an older
-- table, with eth_blocks_chain_number (chain_id, number) instead, this index at start-up.
CREATE TABLE IF NOT EXISTS eth_blocks (
    hash VARCHAR(64) NOT NULL PRIMARY KEY,
    first_seen DOUBLE NOT NULL,
    client VARCHAR(255) NOT NULL,
    chain_id BIGINT,
    number BIGINT,
    block_hash VARCHAR(66),
    parent_hash VARCHAR(66),
    block_time BIGINT,
    id INTEGER,
    INDEX eth_blocks_first_seen (first_seen),
    INDEX eth_blocks_chain (chain_id, number, block_hash, parent_hash, first_seen, hash),
    UNIQUE INDEX eth_blocks_id (id, number)
) DEFAULT CHARSET = utf8mb4;

-- Each client (its hello name, or its address): messages sent and the last block it reported.
-- Names compare as SQLite compares them (by code point), so "Node-A" and "node-a" stay two.
CREATE TABLE IF NOT EXISTS eth_clients (
    client VARCHAR(255) COLLATE utf8mb4_bin NOT NULL PRIMARY KEY,
    address VARCHAR(64) NOT NULL,
    messages BIGINT NOT NULL,
    first_seen DOUBLE NOT NULL,
    last_seen DOUBLE NOT NULL,
    chain_id BIGINT,
    last_block BIGINT
) DEFAULT CHARSET = utf8mb4;

-- Each client name's small id, the sightings' short name for it (never changed or reused).
CREATE TABLE IF NOT EXISTS eth_client_ids (
    id INTEGER PRIMARY KEY AUTO_INCREMENT,
    client VARCHAR(255) COLLATE utf8mb4_bin NOT NULL UNIQUE
) DEFAULT CHARSET = utf8mb4;

-- Who saw which payload when: one row per payload (eth_blocks.id) and client (eth_client_ids),
-- the first sighting kept, in the order of the payloads.  seen_at_ms is on the server's clock
-- (the client's sighting corrected for its clock offset, or the arrival when the payload came
-- without one); via is the index of how in ethtwisted.storage.ledger.VIAS.  day is the UTC day
-- (since 1970) the payload was first seen: one partition a day, so old sightings go a whole
-- day at a time (ethtwisted.storage.partitions makes the days ahead and drops the old ones).
-- A block's sightings are all in its day, so the primary key can hold day and stay unique.
CREATE TABLE IF NOT EXISTS eth_sightings (
    block_id INTEGER NOT NULL,
    client_id INTEGER NOT NULL,
    day SMALLINT NOT NULL,
    seen_at_ms BIGINT NOT NULL,
    via TINYINT NOT NULL,
    PRIMARY KEY (block_id, client_id, day),
    INDEX eth_sightings_client (client_id, seen_at_ms)
) DEFAULT CHARSET = utf8mb4
PARTITION BY RANGE (day) (PARTITION pmax VALUES LESS THAN MAXVALUE);

-- Each client's latest status report: what its node says about itself (NULL: it does not say).
CREATE TABLE IF NOT EXISTS eth_node_status (
    client VARCHAR(255) COLLATE utf8mb4_bin NOT NULL PRIMARY KEY,
    updated DOUBLE NOT NULL,
    client_version VARCHAR(256),
    chain_id BIGINT,
    peers BIGINT,
    syncing SMALLINT,
    sync_current BIGINT,
    sync_highest BIGINT,
    gas_price BIGINT,
    base_fee BIGINT,
    safe BIGINT,
    finalized BIGINT,
    pending BIGINT,
    queued BIGINT,
    rtt_ms DOUBLE
) DEFAULT CHARSET = utf8mb4;

-- Dated changes in a client's state (version, sync, peers, chain); kind names which.
CREATE TABLE IF NOT EXISTS eth_events (
    id BIGINT PRIMARY KEY AUTO_INCREMENT,
    client VARCHAR(255) COLLATE utf8mb4_bin NOT NULL,
    at DOUBLE NOT NULL,
    kind VARCHAR(32) NOT NULL,
    detail VARCHAR(600) NOT NULL,
    INDEX eth_events_client (client, id)
) DEFAULT CHARSET = utf8mb4;

-- Which server holds each watched client's connection (one of today's protocol, whose hello
-- lists features) and when a frame of it last arrived there: refreshed by that server each second.
CREATE TABLE IF NOT EXISTS eth_presence (
    client VARCHAR(255) COLLATE utf8mb4_bin NOT NULL,
    server VARCHAR(64) NOT NULL,
    last_frame DOUBLE NOT NULL,
    connected SMALLINT NOT NULL,
    updated DOUBLE NOT NULL,
    PRIMARY KEY (client, server)
) DEFAULT CHARSET = utf8mb4;

-- The states each watched client is in now, one row per client and state (none: current).
CREATE TABLE IF NOT EXISTS eth_states (
    client VARCHAR(255) COLLATE utf8mb4_bin NOT NULL,
    state VARCHAR(16) NOT NULL,
    chain_id BIGINT,
    since DOUBLE NOT NULL,
    head BIGINT,
    best_head BIGINT,
    PRIMARY KEY (client, state)
) DEFAULT CHARSET = utf8mb4;

-- Each change of a client's state, dated: what /api/v1/events lists and webhooks are sent.
CREATE TABLE IF NOT EXISTS eth_state_events (
    id BIGINT PRIMARY KEY AUTO_INCREMENT,
    client VARCHAR(255) COLLATE utf8mb4_bin NOT NULL,
    chain_id BIGINT,
    state VARCHAR(16) NOT NULL,
    event VARCHAR(8) NOT NULL,
    head BIGINT,
    best_head BIGINT,
    since DOUBLE NOT NULL,
    at DOUBLE NOT NULL,
    text VARCHAR(600) NOT NULL,
    INDEX eth_state_events_at (at),
    INDEX eth_state_events_client (client, id)
) DEFAULT CHARSET = utf8mb4;

-- One row, updated first by each server's decision on the states: deciders wait for (on
-- Galera, conflict with) one another, so each change of state is recorded once.
CREATE TABLE IF NOT EXISTS eth_fleet (
    id INTEGER PRIMARY KEY,
    decided DOUBLE NOT NULL,
    server VARCHAR(64) NOT NULL
) DEFAULT CHARSET = utf8mb4;
INSERT INTO eth_fleet (id, decided, server) VALUES (1, 0, '') ON DUPLICATE KEY UPDATE id = id;

-- Who delivers the state events to a set of webhooks (the SHA256 of its URLs), until when, and
-- the last event all of them have settled: one server at a time, the next one takes over from there.
CREATE TABLE IF NOT EXISTS eth_webhooks (
    hook VARCHAR(64) NOT NULL PRIMARY KEY,
    delivered BIGINT NOT NULL,
    owner VARCHAR(64) NOT NULL,
    lease_until DOUBLE NOT NULL
) DEFAULT CHARSET = utf8mb4;
