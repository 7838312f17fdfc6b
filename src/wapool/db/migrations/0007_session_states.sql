-- The state of each company's session as its daemon last reported it (`wapool status` reads it
-- from any host). Written on every state change; best effort while PostgreSQL is down.
CREATE TABLE session_states (
    company_id text PRIMARY KEY REFERENCES companies (id) ON DELETE CASCADE,
    state      text NOT NULL,
    since      timestamptz NOT NULL,
    last_error text,
    holder     text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
