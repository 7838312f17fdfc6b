"""``wapool adopt``: bring an existing WhatsApp linked device into a company without pairing.

One module per source (``sqlite_source``, ``postgres_source``, ``baileys_source``), each
producing a ``Taken`` device in whatsmeow's column names; ``verify`` refuses keys that do not
verify (``curve``); ``build`` makes and upgrades the working store through neonize; ``service``
puts it in place under the company's lease. See docs/adopt.md.
"""
