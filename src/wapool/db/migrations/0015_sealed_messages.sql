-- Encryption at rest of message bodies (docs/encryption.md). With a master key configured, a
-- message's content is sealed with the company's data key into `sealed`:
-- 'e1:<data key id>:' || nonce || ciphertext || tag, bound to the company, table and message
-- (crypto.messages). What routing, statuses and cleanup select on stays in the clear.
-- inbound_messages: `sealed` holds the whole event; `event` is then NULL and `body` ''.
-- outbound_messages: `sealed` holds text, media and file name; `text` is then '' and `media`,
-- `media_filename` NULL. A producer's plaintext row is sealed by the daemon in the
-- transaction that claims it.
ALTER TABLE inbound_messages ALTER COLUMN event DROP NOT NULL;
ALTER TABLE inbound_messages ADD COLUMN sealed bytea;
ALTER TABLE inbound_messages ADD CONSTRAINT inbound_event_or_sealed
    CHECK (event IS NOT NULL OR sealed IS NOT NULL);

ALTER TABLE outbound_messages ADD COLUMN sealed bytea;
ALTER TABLE outbound_messages DROP CONSTRAINT outbound_has_content;
ALTER TABLE outbound_messages ADD CONSTRAINT outbound_has_content
    CHECK (media IS NOT NULL OR text <> '' OR sealed IS NOT NULL);
