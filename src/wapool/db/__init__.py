"""PostgreSQL access: the pool, bounded queries, health tracking and migrations."""
