-- The expired-key cleanup: one row per run (scheduled runs carry their cron slot, so a slot runs
-- once in a cluster), and the daily size samples behind the growth figures and metrics.
CREATE TABLE cleanup_runs (
    id           bigserial PRIMARY KEY,
    slot         timestamptz UNIQUE,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    status       text NOT NULL DEFAULT 'running'
                 CONSTRAINT cleanup_runs_status CHECK (status IN ('running', 'done', 'failed', 'cancelled')),
    deleted_rows bigint NOT NULL DEFAULT 0,
    deleted_bytes bigint NOT NULL DEFAULT 0,
    host         text NOT NULL DEFAULT '',
    error        text
);

CREATE TABLE store_size_history (
    sampled_on date NOT NULL,
    company_id text NOT NULL,
    tbl        text NOT NULL,
    rows       bigint NOT NULL,
    bytes      bigint NOT NULL,
    sampled_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sampled_on, company_id, tbl)
);
