-- The change-log sequence number of the prefix that last wrote each row. A cleanup purge read
-- its keys at some applied_seq; when the mirror applies the purge it deletes only rows still
-- written at or before that point, so a key rewritten since (and kept in the working store) is
-- kept in PostgreSQL too. Rows from before this column existed count as written at 0.
ALTER TABLE store_rows ADD COLUMN seq bigint NOT NULL DEFAULT 0;
