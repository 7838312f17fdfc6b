"""Messaging: WhatsApp messages in and out of the pool (docs/messaging.md).

Inbound: ``model`` (wapool's own event types, the webhook's JSON), ``inbox`` (the durable local
inbox a worker writes before its handler returns), ``cursors`` (the main process's bookkeeping),
``inbound_mirror`` (inbox -> ``inbound_messages`` in PostgreSQL), ``webhook`` (inbox -> signed
HTTP deliveries).
"""
