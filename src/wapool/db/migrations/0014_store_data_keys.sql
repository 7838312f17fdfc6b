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

ALTER TABLE store_tombstones ADD COLUMN seq bigint NOT NULL DEFAULT 0;
