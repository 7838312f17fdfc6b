"""wapool: one WhatsApp client per company, keys durable in PostgreSQL."""

__version__ = "0.1.0"
