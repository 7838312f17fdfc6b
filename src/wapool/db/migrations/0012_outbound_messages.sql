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
    CONSTRAINT outbound_media_typed CHECK (media IS NULL OR media_mimetype IS NOT NULL),
    CONSTRAINT outbound_has_content CHECK (media IS NOT NULL OR text <> '')
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
