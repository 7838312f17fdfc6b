-- Inbound messages (issue 10): every message a company's sessions received, carried from the
-- company's local inbox by the mirror. One row per company and WhatsApp message id: a replayed
-- batch or a message WhatsApp delivered twice is not a second row. The mirror notifies
-- LISTEN wapool_inbound (payload: the company id) in the transaction that inserts rows.
-- holder/epoch: the daemon whose session received it, under which lease epoch.
CREATE TABLE inbound_messages (
    company_id  text NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
    message_id  text NOT NULL,
    id          bigint GENERATED ALWAYS AS IDENTITY,
    chat_jid    text NOT NULL,
    sender_jid  text NOT NULL,
    from_me     boolean NOT NULL,
    is_group    boolean NOT NULL,
    kind        text NOT NULL,
    body        text NOT NULL DEFAULT '',
    sent_at     timestamptz NOT NULL,
    received_at timestamptz NOT NULL,
    event       jsonb NOT NULL,
    holder      text NOT NULL,
    epoch       bigint NOT NULL,
    inserted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (company_id, message_id)
);

CREATE INDEX inbound_messages_recent_idx ON inbound_messages (company_id, id);
