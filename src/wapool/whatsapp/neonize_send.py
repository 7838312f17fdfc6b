"""Sending through a real neonize client: build the message, send it, place any failure.

Text goes through ``send_message``; media through neonize's builders (``build_image_message``,
``build_video_message``, ``build_audio_message``, ``build_document_message``, which upload the
bytes first) and then ``send_message``; a reply quotes the message id it answers. Nothing is
fetched from a path or URL: the builders only ever get bytes.

Failures become ``SendFailure`` through ``sending.classify``: with no connection neonize 0.5.2
answers at once (``client is nil`` before ``connect()``, ``the store doesn't contain a device
JID`` when unpaired, ``websocket not connected`` after a failed connect), before anything is
sent, so the message keeps waiting; an error after the request may have left is ``uncertain``.
"""

from __future__ import annotations

from typing import Any

from wapool.observability.redact import describe_error
from wapool.whatsapp.sending import Outcome, SendCommand, SendFailure, SendResult, classify


def send(client: Any, command: SendCommand, known: set[str] | None = None) -> SendResult:
    """Send ``command`` through ``client`` (a ``neonize.client.NewClient``); never raises.

    ``known``: phone JIDs already found on WhatsApp (the caller keeps it per client); others
    are checked with ``is_on_whatsapp`` first, so a number without WhatsApp fails clearly."""
    try:
        _check_on_whatsapp(client, command.to, known if known is not None else set())
        message = _build(client, command)
    except SendFailure as exc:
        return SendResult(command.id, exc.outcome, reason=exc.reason)
    except Exception as exc:  # an upload or a builder failed: nothing was sent
        failure = classify(describe_error(exc))
        outcome = Outcome.FAILED if failure.outcome is Outcome.UNCERTAIN else failure.outcome
        reason = failure.reason if outcome is failure.outcome else f"media: {describe_error(exc)}"
        return SendResult(command.id, outcome, reason=reason)
    try:
        response = client.send_message(_jid(command.to), message)
    except Exception as exc:
        failure = classify(describe_error(exc))
        return SendResult(command.id, failure.outcome, reason=failure.reason)
    return SendResult(command.id, Outcome.SENT, whatsapp_id=str(response.ID) or None)


def mark_read(client: Any, chat: str, sender: str, message_ids: list[str]) -> None:
    """Read receipts (``mark_read``) for inbound messages of ``chat`` from ``sender``."""
    from neonize.utils.enum import ReceiptType

    client.mark_read(*message_ids, chat=_jid(chat), sender=_jid(sender),
                     receipt=ReceiptType.READ)  # fmt: skip


def _check_on_whatsapp(client: Any, to: str, known: set[str]) -> None:
    user, server = to.split("@", 1)
    if server != "s.whatsapp.net" or to in known:
        return
    try:
        answers = client.is_on_whatsapp(user)
    except Exception as exc:
        failure = classify(describe_error(exc))
        if failure.outcome is Outcome.UNCERTAIN:  # a query, not a send: nothing left
            raise SendFailure(Outcome.NOT_SENT, f"not_connected: {describe_error(exc)}") from None
        raise failure from None
    if not any(bool(a.IsIn) for a in answers):
        raise SendFailure(Outcome.FAILED, f"not_on_whatsapp: {user} has no WhatsApp account")
    known.add(to)


def _jid(to: str) -> Any:
    from neonize.proto.Neonize_pb2 import JID

    user, server = to.split("@", 1)
    return JID(User=user, Server=server, RawAgent=0, Device=0, Integrator=0, IsEmpty=False)


def _build(client: Any, command: SendCommand) -> Any:
    from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import (
        ContextInfo,
        ExtendedTextMessage,
        Message,
    )

    quote = ContextInfo(stanzaID=command.reply_to) if command.reply_to else None
    if command.media is None:
        if quote is None:
            return Message(conversation=command.text)
        return Message(extendedTextMessage=ExtendedTextMessage(text=command.text,
                                                               contextInfo=quote))  # fmt: skip
    caption = command.text or None
    major = (command.mimetype or "").split("/", 1)[0]
    if major == "image":
        message = client.build_image_message(command.media, caption=caption)
        field = message.imageMessage
    elif major == "video":
        message = client.build_video_message(command.media, caption=caption)
        field = message.videoMessage
    elif major == "audio":
        message = client.build_audio_message(command.media)
        field = message.audioMessage
    else:
        message = client.build_document_message(
            command.media, caption=caption, filename=command.filename, mimetype=command.mimetype
        )
        field = message.documentMessage
    if quote is not None:
        field.contextInfo.MergeFrom(quote)
    return message
