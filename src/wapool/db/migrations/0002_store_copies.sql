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
    digest             text,
    digest_seq         bigint,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE store_rows (
    company_id text NOT NULL REFERENCES store_copies (company_id) ON DELETE CASCADE,
    tbl        text NOT NULL,
    pk         text NOT NULL,
    image      text NOT NULL,
    -- when the row was last written in the working store (the cleanup's retention clock)
    written_at timestamptz NOT NULL,
    PRIMARY KEY (company_id, tbl, pk)
);

CREATE INDEX store_rows_written_at_idx ON store_rows (tbl, written_at);

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
