"""Session supervision: per-company state, reconnect policy, (coming) worker processes."""
