"""Encryption at rest: master keys from the platform (``keyring``), one data key per company
wrapped by a master key, and row images sealed with AES-256-GCM (``envelope``)."""
