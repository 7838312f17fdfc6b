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
