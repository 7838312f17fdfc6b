-- store_copies.digest / digest_seq were reserved for a whole-copy checksum that nothing ever
-- wrote or read: `wapool verify` compares the rows themselves, and exports carry their own
-- digest in the file. Keeping one up to date would cost a pass over every row per apply.
ALTER TABLE store_copies DROP COLUMN digest, DROP COLUMN digest_seq;
