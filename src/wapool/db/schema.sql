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
