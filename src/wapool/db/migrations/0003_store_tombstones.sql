-- What a company's PostgreSQL copy held when its device was deleted (logout, device removed),
-- kept for the retention period so an accidental logout can be investigated or undone.
CREATE TABLE store_tombstones (
    company_id    text NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
    tombstoned_at timestamptz NOT NULL,
    tbl           text NOT NULL,
    pk            text NOT NULL,
    image         text NOT NULL,
    written_at    timestamptz NOT NULL,
    PRIMARY KEY (company_id, tombstoned_at, tbl, pk)
);
