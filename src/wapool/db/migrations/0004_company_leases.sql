-- Single writer: which daemon drives each company, until when, and with which fencing epoch.
-- The epoch grows on every takeover; the mirror applies a prefix only under the current one.
CREATE TABLE company_leases (
    company_id text PRIMARY KEY REFERENCES companies (id) ON DELETE CASCADE,
    holder     text NOT NULL,
    epoch      bigint NOT NULL,
    expires_at timestamptz NOT NULL
);
