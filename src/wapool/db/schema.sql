-- Canonical schema of the latest version: what all migrations together must produce.
-- Keep it in step with db/migrations/ (tests/test_migrations.py compares the two).
-- The company registry: which WhatsApp sessions this deployment keeps connected.
-- Removal is soft (removed_at) so that a company's key copy outlives a mistaken removal until
-- the retention cleanup deletes it.
CREATE TABLE companies (
    id           text PRIMARY KEY
                 CONSTRAINT companies_id_shape CHECK (id ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    display_name text NOT NULL DEFAULT ''
                 CONSTRAINT companies_display_name_length CHECK (length(display_name) <= 200),
    enabled      boolean NOT NULL DEFAULT true,
    paired_jid   text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    removed_at   timestamptz
);

CREATE INDEX companies_enabled_idx ON companies (id) WHERE enabled AND removed_at IS NULL;

-- Tell running daemons at once that the registry changed (LISTEN wapool_companies).
CREATE FUNCTION companies_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('wapool_companies', COALESCE(NEW.id, OLD.id));
    RETURN NULL;
END;
$$;

CREATE TRIGGER companies_notify
    AFTER INSERT OR UPDATE OR DELETE ON companies
    FOR EACH ROW EXECUTE FUNCTION companies_notify();
-- The PostgreSQL copy of each company's working store (the system of record).
-- Rows are stored generically (table, key, image as type-tagged JSON text), so a whatsmeow schema
-- upgrade needs no migration here: the store's own DDL travels in store_copies.schema_ddl.
CREATE TABLE store_copies (
    company_id         text PRIMARY KEY REFERENCES companies (id) ON DELETE CASCADE,
    store_uuid         uuid NOT NULL,
    schema_version     integer NOT NULL,
    schema_fingerprint text NOT NULL,
    schema_ddl         text NOT NULL,
    applied_seq        bigint NOT NULL DEFAULT 0 CONSTRAINT store_copies_seq_positive CHECK (applied_seq >= 0),
    epoch              bigint NOT NULL DEFAULT 0,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

-- A copy's rows go with it (store_rows_follow_copy below): no foreign key, which checked every
-- row the mirror writes (0016).
CREATE TABLE store_rows (
    company_id text NOT NULL,
    tbl        text NOT NULL,
    pk         text NOT NULL,
    image      text NOT NULL,
    -- when the row was last written in the working store (the cleanup's retention clock)
    written_at timestamptz NOT NULL,
    -- the change-log sequence number of the prefix that last wrote the row (0: before 0008); a
    -- cleanup purge deletes only rows not rewritten since it read its keys
    seq        bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (company_id, tbl, pk)
);

CREATE INDEX store_rows_written_at_idx ON store_rows (tbl, written_at);

CREATE FUNCTION store_rows_follow_copy() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM store_rows WHERE company_id = OLD.company_id;
    RETURN OLD;
END $$;

CREATE TRIGGER store_rows_follow_copy AFTER DELETE ON store_copies
    FOR EACH ROW EXECUTE FUNCTION store_rows_follow_copy();

-- Every `wapool import`, for the audit trail.
CREATE TABLE store_imports (
    id          bigserial PRIMARY KEY,
    company_id  text NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
    store_uuid  uuid NOT NULL,
    rows        bigint NOT NULL,
    digest      text NOT NULL,
    forced      boolean NOT NULL,
    source      text NOT NULL,
    imported_at timestamptz NOT NULL DEFAULT now()
);
-- What a company's PostgreSQL copy held when its device was deleted (logout, device removed),
-- kept for the retention period so an accidental logout can be investigated or undone.
CREATE TABLE store_tombstones (
    company_id    text NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
    tombstoned_at timestamptz NOT NULL,
    tbl           text NOT NULL,
    pk            text NOT NULL,
    image         text NOT NULL,
    written_at    timestamptz NOT NULL,
    seq           bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (company_id, tombstoned_at, tbl, pk)
);
-- Single writer: which daemon drives each company, until when, and with which fencing epoch.
-- The epoch grows on every takeover; the mirror applies a prefix only under the current one.
CREATE TABLE company_leases (
    company_id text PRIMARY KEY REFERENCES companies (id) ON DELETE CASCADE,
    holder     text NOT NULL,
    epoch      bigint NOT NULL,
    expires_at timestamptz NOT NULL,
    -- a graceful handoff: holder '', expired, the copy's applied sequence at the release, the
    -- node it was handed to (for one lease length); move_to: `wapool move` asks for a handoff
    released_seq bigint,
    reserved_for text,
    move_to      text
);

-- Several hosts: every daemon registers and beats its heart; `wapool drain` sets draining.
CREATE TABLE nodes (
    name         text PRIMARY KEY,
    address      text NOT NULL DEFAULT '',
    version      text NOT NULL DEFAULT '',
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    draining     boolean NOT NULL DEFAULT false,
    companies    integer NOT NULL DEFAULT 0
);

-- The expired-key cleanup: one row per run (scheduled runs carry their cron slot, so a slot runs
-- once in a cluster), and the daily size samples behind the growth figures and metrics.
-- 'interrupted': the daemon running it died; its slot runs again within the misfire grace.
CREATE TABLE cleanup_runs (
    id           bigserial PRIMARY KEY,
    slot         timestamptz UNIQUE,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    status       text NOT NULL DEFAULT 'running'
                 CONSTRAINT cleanup_runs_status
                 CHECK (status IN ('running', 'done', 'failed', 'cancelled', 'interrupted')),
    deleted_rows bigint NOT NULL DEFAULT 0,
    deleted_bytes bigint NOT NULL DEFAULT 0,
    host         text NOT NULL DEFAULT '',
    error        text
);

CREATE TABLE store_size_history (
    sampled_on date NOT NULL,
    company_id text NOT NULL,
    tbl        text NOT NULL,
    rows       bigint NOT NULL,
    bytes      bigint NOT NULL,
    sampled_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sampled_on, company_id, tbl)
);
-- `wapool pair`: the command asks, the daemon that drives the company answers with QR or pair
-- codes as they rotate, then the paired JID. Changes are announced on `wapool_pairing`.
CREATE TABLE pairing_requests (
    company_id   text PRIMARY KEY REFERENCES companies (id) ON DELETE CASCADE,
    requested_at timestamptz NOT NULL DEFAULT now(),
    phone        text CONSTRAINT pairing_phone_digits CHECK (phone ~ '^[0-9]{8,15}$'),
    code_kind    text CONSTRAINT pairing_code_kind CHECK (code_kind IN ('qr', 'pair_code')),
    code         text,
    code_at      timestamptz,
    phone_sent   boolean NOT NULL DEFAULT false,
    paired_jid   text,
    error        text,
    finished_at  timestamptz
);

CREATE FUNCTION pairing_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('wapool_pairing', NEW.company_id);
    RETURN NULL;
END;
$$;

CREATE TRIGGER pairing_notify
    AFTER INSERT OR UPDATE ON pairing_requests
    FOR EACH ROW EXECUTE FUNCTION pairing_notify();
-- The state of each company's session as its daemon last reported it (`wapool status` reads it
-- from any host). Written on every state change; best effort while PostgreSQL is down.
CREATE TABLE session_states (
    company_id text PRIMARY KEY REFERENCES companies (id) ON DELETE CASCADE,
    state      text NOT NULL,
    since      timestamptz NOT NULL,
    last_error text,
    holder     text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- Outbound messages (issue 10). Producers either call the API (the driving daemon accepts into
-- its local outbox and mirrors here) or INSERT a row here themselves:
--     INSERT INTO outbound_messages (company_id, to_jid, text, idempotency_key)
--     VALUES ('acme', '491701234567@s.whatsapp.net', 'Hello', 'order-42');
-- A producer's row must leave id, status and the claim columns to their defaults; the daemon
-- holding the company's lease claims it at once (LISTEN wapool_outbound, payload: company id),
-- under its epoch, and from then on only that daemon writes the row (status, reason,
-- whatsapp_id, attempts, updated_at). Status: queued, sending, sent, delivered, read, failed,
-- uncertain (it may have been sent before a kill: never repeated unless asked).
CREATE TABLE outbound_messages (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    company_id      text NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
    idempotency_key text CONSTRAINT outbound_key_length CHECK (length(idempotency_key) <= 200),
    to_jid          text NOT NULL,
    text            text NOT NULL DEFAULT '',
    reply_to        text,
    media           bytea,
    media_mimetype  text,
    media_filename  text,
    expires_at      timestamptz,
    status          text NOT NULL DEFAULT 'queued' CONSTRAINT outbound_status CHECK (status IN
                        ('queued', 'sending', 'sent', 'delivered', 'read', 'failed', 'uncertain')),
    reason          text,
    whatsapp_id     text,
    origin          text NOT NULL DEFAULT 'sql',
    attempts        integer NOT NULL DEFAULT 0,
    claimed_by      text,
    claimed_epoch   bigint,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    sealed          bytea,
    CONSTRAINT outbound_media_typed CHECK (media IS NULL OR media_mimetype IS NOT NULL),
    CONSTRAINT outbound_has_content CHECK (media IS NOT NULL OR text <> '' OR sealed IS NOT NULL)
);

CREATE UNIQUE INDEX outbound_messages_key_idx ON outbound_messages (company_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX outbound_messages_unclaimed_idx ON outbound_messages (company_id, created_at)
    WHERE claimed_by IS NULL AND status = 'queued';
CREATE INDEX outbound_messages_recent_idx ON outbound_messages (company_id, created_at);

CREATE FUNCTION outbound_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('wapool_outbound', NEW.company_id);
    RETURN NULL;
END;
$$;

CREATE TRIGGER outbound_notify
    AFTER INSERT OR UPDATE ON outbound_messages
    FOR EACH ROW WHEN (NEW.claimed_by IS NULL AND NEW.status = 'queued')
    EXECUTE FUNCTION outbound_notify();

-- Inbound messages (issue 10): every message a company's sessions received, carried from the
-- company's local inbox by the mirror. One row per company and WhatsApp message id: a replayed
-- batch or a message WhatsApp delivered twice is not a second row. The mirror notifies
-- LISTEN wapool_inbound (payload: the company id) in the transaction that inserts rows.
-- holder/epoch: the daemon whose session received it, under which lease epoch.
CREATE TABLE inbound_messages (
    company_id  text NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
    message_id  text NOT NULL,
    id          bigint GENERATED ALWAYS AS IDENTITY,
    chat_jid    text NOT NULL,
    sender_jid  text NOT NULL,
    from_me     boolean NOT NULL,
    is_group    boolean NOT NULL,
    kind        text NOT NULL,
    body        text NOT NULL DEFAULT '',
    sent_at     timestamptz NOT NULL,
    received_at timestamptz NOT NULL,
    event       jsonb,
    holder      text NOT NULL,
    epoch       bigint NOT NULL,
    inserted_at timestamptz NOT NULL DEFAULT now(),
    sealed      bytea,
    PRIMARY KEY (company_id, message_id),
    CONSTRAINT inbound_event_or_sealed CHECK (event IS NOT NULL OR sealed IS NOT NULL)
);

CREATE INDEX inbound_messages_recent_idx ON inbound_messages (company_id, id);
-- Encryption at rest (docs/encryption.md): one data key per company (a company may hold several
-- while rows are re-encrypted), each wrapped (AES-256-GCM) by the master key `master_key_id`.
-- Row images sealed with a data key are text 'e1:<key_id>:<base64>' in the same image columns;
-- their associated data binds the row's seq, so tombstones keep the seq of the row they copy.
CREATE TABLE store_data_keys (
    company_id    text NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
    key_id        text NOT NULL,
    master_key_id text NOT NULL,
    wrapped       bytea NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    rewrapped_at  timestamptz,
    PRIMARY KEY (company_id, key_id)
);
-- Message bodies (docs/encryption.md): with a master key, `sealed` holds a message's content
-- ('e1:<data key id>:' || nonce || ciphertext || tag, bound to company, table and message):
-- inbound the whole event (`event` NULL, `body` ''), outbound text, media and file name
-- (`text` '', `media` and `media_filename` NULL). A producer's plaintext outbound row is sealed
-- by the daemon in the transaction that claims it.
