"""Messaging: carrying messages both ways through a company's session (docs/messaging.md)."""
