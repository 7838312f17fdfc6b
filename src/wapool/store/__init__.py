"""The durable auth store.

Where a key update goes, in order:

1. ``working_store``  whatsmeow writes it to the company's local SQLite file (``store.db``);
2. ``capture``        a trigger appends it to the local ``wapool_changelog`` in the same transaction;
3. ``changelog``      the mirror reads a consistent, coalesced prefix of that log;
4. ``mirror``         ...and applies it to PostgreSQL in one transaction (``pg_copy``), then trims it.

While PostgreSQL is down, step 4 waits (with backoff) and the changelog simply grows on disk.
``restore`` rebuilds a missing, corrupt or stale working store from PostgreSQL, or from the
``snapshot_cache`` when PostgreSQL is down too. The nightly cleanup's deletes travel the same
way, one ``purge`` entry per batch instead of one entry per row.
"""
