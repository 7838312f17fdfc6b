"""WhatsApp backends. ``neonize_store`` and the (coming) neonize adapter are the only modules
that import neonize."""
