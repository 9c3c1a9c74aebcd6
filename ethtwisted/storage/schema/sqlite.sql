-- The older servers' table: each distinct payload once, under the SHA256 of its bytes.
CREATE TABLE IF NOT EXISTS ethereum_data (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    hash VARCHAR(64) NOT NULL UNIQUE,
    payload TEXT
);

-- When each payload was first seen, from which client, and what it says about a block; id is
-- the payload's id in ethereum_data, the sightings' short name for it.
CREATE TABLE IF NOT EXISTS eth_blocks (
    hash VARCHAR(64) NOT NULL PRIMARY KEY,
    first_seen DOUBLE NOT NULL,
    client VARCHAR(255) NOT NULL,
    chain_id BIGINT,
    number BIGINT,
    block_hash VARCHAR(66),
    parent_hash VARCHAR(66),
    block_time BIGINT,
    id INTEGER
);
CREATE INDEX IF NOT EXISTS eth_blocks_first_seen ON eth_blocks (first_seen);
CREATE UNIQUE INDEX IF NOT EXISTS eth_blocks_id ON eth_blocks (id, number);
-- All that the chain reads need, so they read the index alone, in order of height; it replaces
-- the older eth_blocks_chain_number (chain_id, number).
CREATE INDEX IF NOT EXISTS eth_blocks_chain
    ON eth_blocks (chain_id, number, block_hash, parent_hash, first_seen, hash);
DROP INDEX IF EXISTS eth_blocks_chain_number;

-- Each client (its hello name, or its address): messages sent and the last block it reported.
CREATE TABLE IF NOT EXISTS eth_clients (
    client VARCHAR(255) NOT NULL PRIMARY KEY,
    address VARCHAR(64) NOT NULL,
    messages BIGINT NOT NULL,
    first_seen DOUBLE NOT NULL,
    last_seen DOUBLE NOT NULL,
    chain_id BIGINT,
    last_block BIGINT
);

-- Each client name's small id, the sightings' short name for it (never changed or reused).
CREATE TABLE IF NOT EXISTS eth_client_ids (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    client VARCHAR(255) NOT NULL UNIQUE
);

-- Who saw which payload when, as in mysql.sql (without partitions: old days go by DELETE).
CREATE TABLE IF NOT EXISTS eth_sightings (
    block_id INTEGER NOT NULL,
    client_id INTEGER NOT NULL,
    day SMALLINT NOT NULL,
    seen_at_ms BIGINT NOT NULL,
    via TINYINT NOT NULL,
    PRIMARY KEY (block_id, client_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS eth_sightings_client ON eth_sightings (client_id, seen_at_ms);

-- Each client's latest status report: what its node says about itself (NULL: it does not say).
CREATE TABLE IF NOT EXISTS eth_node_status (
    client VARCHAR(255) NOT NULL PRIMARY KEY,
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
);

-- Dated changes in a client's state (version, sync, peers, chain); kind names which.
CREATE TABLE IF NOT EXISTS eth_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    client VARCHAR(255) NOT NULL,
    at DOUBLE NOT NULL,
    kind VARCHAR(32) NOT NULL,
    detail VARCHAR(600) NOT NULL
);
CREATE INDEX IF NOT EXISTS eth_events_client ON eth_events (client, id);

-- Which server holds each watched client's connection (one of today's protocol, whose hello
-- lists features) and when a frame of it last arrived there: refreshed by that server each second.
CREATE TABLE IF NOT EXISTS eth_presence (
    client VARCHAR(255) NOT NULL,
    server VARCHAR(64) NOT NULL,
    last_frame DOUBLE NOT NULL,
    connected SMALLINT NOT NULL,
    updated DOUBLE NOT NULL,
    PRIMARY KEY (client, server)
);

-- The states each watched client is in now, one row per client and state (none: current).
CREATE TABLE IF NOT EXISTS eth_states (
    client VARCHAR(255) NOT NULL,
    state VARCHAR(16) NOT NULL,
    chain_id BIGINT,
    since DOUBLE NOT NULL,
    head BIGINT,
    best_head BIGINT,
    PRIMARY KEY (client, state)
);

-- Each change of a client's state, dated: what /api/v1/events lists and webhooks are sent.
CREATE TABLE IF NOT EXISTS eth_state_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    client VARCHAR(255) NOT NULL,
    chain_id BIGINT,
    state VARCHAR(16) NOT NULL,
    event VARCHAR(8) NOT NULL,
    head BIGINT,
    best_head BIGINT,
    since DOUBLE NOT NULL,
    at DOUBLE NOT NULL,
    text VARCHAR(600) NOT NULL
);
CREATE INDEX IF NOT EXISTS eth_state_events_at ON eth_state_events (at);
CREATE INDEX IF NOT EXISTS eth_state_events_client ON eth_state_events (client, id);

-- One row, updated first by each server's decision on the states: deciders wait for (on
-- Galera, conflict with) one another, so each change of state is recorded once.
CREATE TABLE IF NOT EXISTS eth_fleet (
    id INTEGER PRIMARY KEY,
    decided DOUBLE NOT NULL,
    server VARCHAR(64) NOT NULL
);
INSERT INTO eth_fleet (id, decided, server) VALUES (1, 0, '') ON CONFLICT (id) DO NOTHING;

-- Who delivers the state events to a set of webhooks (the SHA256 of its URLs), until when, and
-- the last event all of them have settled: one server at a time, the next one takes over from there.
CREATE TABLE IF NOT EXISTS eth_webhooks (
    hook VARCHAR(64) NOT NULL PRIMARY KEY,
    delivered BIGINT NOT NULL,
    owner VARCHAR(64) NOT NULL,
    lease_until DOUBLE NOT NULL
);
