-- The coins ledger read models (projection `ledger`), built from the Wallet streams.

-- One row per line of every posting: the double entries. Per posting the lines sum to zero.
CREATE TABLE ledger_entries
(
    -- the wallet (user id) whose stream holds the posting, and the posting's event sequence
    wallet_id      TEXT NOT NULL,
    sequence       INTEGER NOT NULL,
    line           INTEGER NOT NULL,
    transaction_id TEXT NOT NULL,
    -- purchase | withdrawal | payout | refund | charge | earning | forfeit
    kind           TEXT NOT NULL,
    -- user:<id> | external:payments | external:payouts | platform:revenue | platform:...
    account        TEXT NOT NULL,
    coins          INTEGER NOT NULL,
    at             TEXT NOT NULL,
    PRIMARY KEY (wallet_id, sequence, line)
);
CREATE INDEX ledger_entries_account ON ledger_entries (account, at);

-- Every account's balance (the sum of its entries); user wallets are `user:<id>`.
CREATE TABLE ledger_accounts
(
    account    TEXT PRIMARY KEY,
    balance    INTEGER NOT NULL,
    -- user wallets: the hash of the wallet's last posting (the audit compares it)
    head_hash  TEXT,
    updated_at TEXT NOT NULL
);

-- basic_transaction: what a user sees of their money.
CREATE TABLE ledger_transactions
(
    id               TEXT PRIMARY KEY,
    user_id          TEXT NOT NULL,
    -- purchase | earning | withdrawal | charge | refund | forfeit
    type             TEXT NOT NULL,
    -- top-up | call | withdraw
    intent           TEXT NOT NULL,
    -- pending | processing | succeeded | failed | canceled | expired
    status           TEXT NOT NULL,
    coins            INTEGER NOT NULL,
    -- money in US cents (price paid, payout sent)
    funds_cents      INTEGER NOT NULL,
    currency         TEXT NOT NULL,
    call_id          TEXT,
    -- top-ups: the payment session, its provider and when it expires unpaid
    session_id       TEXT,
    provider         TEXT,
    session_url      TEXT,
    expires_at       TEXT,
    -- the event position that last changed it (alerts and pushes follow it)
    changed_position INTEGER NOT NULL,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL
);
CREATE INDEX ledger_transactions_user ON ledger_transactions (user_id, created_at, id);
CREATE INDEX ledger_transactions_session ON ledger_transactions (session_id);
CREATE INDEX ledger_transactions_changed ON ledger_transactions (changed_position);
CREATE INDEX ledger_transactions_open ON ledger_transactions (status, type, expires_at);

-- Webhook deliveries already processed, by signature: the same signed delivery sent again is a
-- replay and is refused (a provider's genuine retry is signed anew). Pruned after an hour, when
-- the signature is stale anyway.
CREATE TABLE webhook_deliveries
(
    signature   TEXT PRIMARY KEY,
    provider    TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    received_at TEXT NOT NULL
);
