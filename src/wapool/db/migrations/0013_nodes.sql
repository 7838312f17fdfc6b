-- Several hosts: every daemon registers here and beats its heart; each aims for its fair share
-- of the companies (companies / live nodes). `wapool drain` sets `draining`; a daemon that
-- starts clears it. `companies` is what the node last reported holding.
CREATE TABLE nodes (
    name         text PRIMARY KEY,
    address      text NOT NULL DEFAULT '',
    version      text NOT NULL DEFAULT '',
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    draining     boolean NOT NULL DEFAULT false,
    companies    integer NOT NULL DEFAULT 0
);

-- Graceful handoffs: a holder that hands a company over keeps the row, expired, with no holder
-- ('') and the PostgreSQL copy's applied sequence at that moment (the taker restores at or
-- beyond it); `reserved_for` names the node it was handed to (`wapool move`) for one lease
-- length. `move_to` asks the holder to hand the company to that node.
ALTER TABLE company_leases
    ADD COLUMN released_seq bigint,
    ADD COLUMN reserved_for text,
    ADD COLUMN move_to      text;
