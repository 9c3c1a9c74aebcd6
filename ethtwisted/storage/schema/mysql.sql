-- The older servers' table: each distinct payload once, under the SHA256 of its bytes.
CREATE TABLE IF NOT EXISTS ethereum_data (
    id INTEGER PRIMARY KEY AUTO_INCREMENT,
    hash VARCHAR(64) NOT NULL UNIQUE,
    payload TEXT
) DEFAULT CHARSET = utf8mb4;

-- When each payload was first seen, from which client, and what it says about a block.
CREATE TABLE IF NOT EXISTS eth_blocks (
    hash VARCHAR(64) NOT NULL PRIMARY KEY,
    first_seen DOUBLE NOT NULL,
    client VARCHAR(255) NOT NULL,
    chain_id BIGINT,
    number BIGINT,
    block_hash VARCHAR(66),
    parent_hash VARCHAR(66),
    block_time BIGINT,
    INDEX eth_blocks_first_seen (first_seen),
    INDEX eth_blocks_chain_number (chain_id, number)
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
