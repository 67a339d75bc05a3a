-- The coins ledger read models (projection `ledger`), built from the Wallet streams.

-- One row per line of every posting: the double entries. Per posting the lines sum to zero.
CREATE TABLE ledger_entries
(
    -- the wallet (user id) whose stream holds the posting, and the posting's event sequence
    wallet_id      text NOT NULL,
    sequence       bigint NOT NULL,
    line           integer NOT NULL,
    transaction_id text NOT NULL,
    -- purchase | withdrawal | payout | refund | charge | earning | forfeit
    kind           text NOT NULL,
    -- user:<id> | external:payments | external:payouts | platform:revenue | platform:...
    account        text NOT NULL,
    coins          bigint NOT NULL,
    at             timestamptz NOT NULL,
    PRIMARY KEY (wallet_id, sequence, line)
);
CREATE INDEX ledger_entries_account ON ledger_entries (account, at);

-- Every account's balance (the sum of its entries); user wallets are `user:<id>`.
CREATE TABLE ledger_accounts
(
    account    text PRIMARY KEY,
    balance    bigint NOT NULL,
    -- user wallets: the hash of the wallet's last posting (the audit compares it)
    head_hash  text,
    updated_at timestamptz NOT NULL
);

-- basic_transaction: what a user sees of their money.
CREATE TABLE ledger_transactions
(
    id               text PRIMARY KEY,
    user_id          text NOT NULL,
    -- purchase | earning | withdrawal | charge | refund | forfeit
    type             text NOT NULL,
    -- top-up | call | withdraw
    intent           text NOT NULL,
    -- pending | processing | succeeded | failed | canceled | expired
    status           text NOT NULL,
    coins            bigint NOT NULL,
    -- money in US cents (price paid, payout sent)
    funds_cents      bigint NOT NULL,
    currency         text NOT NULL,
    call_id          text,
    -- top-ups: the payment session, its provider and when it expires unpaid
    session_id       text,
    provider         text,
    session_url      text,
    expires_at       timestamptz,
    -- the event position that last changed it (alerts and pushes follow it)
    changed_position bigint NOT NULL,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL
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
    signature   text PRIMARY KEY,
    provider    text NOT NULL,
    event_id    text NOT NULL,
    received_at timestamptz NOT NULL
);

GRANT SELECT ON ledger_entries, ledger_accounts, ledger_transactions TO talkamie_analyst;
