-- A cleanup run whose daemon died (killed, host lost) is marked 'interrupted' by the next node
-- that takes the cleanup lock, and its slot runs again within the misfire grace.
ALTER TABLE cleanup_runs DROP CONSTRAINT cleanup_runs_status;
ALTER TABLE cleanup_runs ADD CONSTRAINT cleanup_runs_status
    CHECK (status IN ('running', 'done', 'failed', 'cancelled', 'interrupted'));
