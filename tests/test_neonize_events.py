"""neonize's own MessageEv/ReceiptEv protobufs, built offline, translate to wapool's events."""

from __future__ import annotations

import base64
import hashlib

import pytest
from neonize.events import MessageEv, ReceiptEv
from neonize.proto import Neonize_pb2 as N
from neonize.proto.waCommon import WACommon_pb2 as C
from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as E

from wapool.messaging import model
from wapool.whatsapp.neonize_events import translate_message, translate_receipt

pytestmark = pytest.mark.timeout(30)

CHAT = N.JID(User="5511999", Server="s.whatsapp.net")
SENDER = N.JID(User="5511999", Server="s.whatsapp.net", Device=3)
LID = N.JID(User="987654", Server="lid")


def event(msg: E.Message, *, group: bool = False, from_me: bool = False) -> MessageEv:
    source = N.MessageSource(
        Chat=N.JID(User="1203630", Server="g.us") if group else CHAT, Sender=SENDER,
        SenderAlt=LID, IsFromMe=from_me, IsGroup=group,
    )  # fmt: skip
    info = N.MessageInfo(
        MessageSource=source, ID="3EB0ABC", Pushname="Ana", Timestamp=1_700_000_000_250
    )
    return MessageEv(Info=info, Message=msg)


def test_plain_text_and_its_envelope() -> None:
    got = translate_message("acme", event(E.Message(conversation="hi there")))
    assert got == model.InboundMessage(
        company="acme", message_id="3EB0ABC", chat="5511999@s.whatsapp.net",
        sender="5511999:3@s.whatsapp.net", sender_alt="987654@lid", timestamp=1_700_000_000.25,
        kind="text", text="hi there", push_name="Ana",
    )  # fmt: skip


def test_extended_text_reply_in_a_group_from_me() -> None:
    ext = E.ExtendedTextMessage(text="yes", contextInfo=E.ContextInfo(stanzaID="QUOTED1"))
    got = translate_message(
        "acme", event(E.Message(extendedTextMessage=ext), group=True, from_me=True)
    )
    assert (got.kind, got.text, got.quoted_id) == ("text", "yes", "QUOTED1")
    assert got.is_group
    assert got.from_me
    assert got.chat == "1203630@g.us"


@pytest.mark.parametrize(
    ("field", "kind", "part"),
    [
        ("imageMessage", "image", E.ImageMessage(mimetype="image/jpeg", caption="look", fileLength=1234)),
        ("videoMessage", "video", E.VideoMessage(mimetype="video/mp4", seconds=12, fileLength=9)),
        ("audioMessage", "audio", E.AudioMessage(mimetype="audio/ogg; codecs=opus", seconds=4, PTT=True)),
        ("documentMessage", "document", E.DocumentMessage(mimetype="application/pdf", fileName="a.pdf", caption="inv")),
        ("stickerMessage", "sticker", E.StickerMessage(mimetype="image/webp", fileLength=77)),
    ],
)  # fmt: skip
def test_media_metadata(field: str, kind: str, part: object) -> None:
    digest = hashlib.sha256(b"file").digest()
    part.fileSHA256 = digest  # type: ignore[attr-defined]
    got = translate_message("acme", event(E.Message(**{field: part})))
    assert got.kind == kind
    assert got.media is not None
    assert got.media.kind == kind
    assert got.media.mimetype == part.mimetype  # type: ignore[attr-defined]
    assert got.media.size == part.fileLength  # type: ignore[attr-defined]
    assert got.media.sha256 == digest.hex()
    assert got.media.file_name == getattr(part, "fileName", "")
    assert got.media.duration == (part.seconds if kind in ("video", "audio") else None)  # type: ignore[attr-defined]
    assert got.text == getattr(part, "caption", "")


def test_wrapped_document_with_caption_is_unwrapped() -> None:
    inner = E.Message(documentMessage=E.DocumentMessage(fileName="x.pdf", caption="c"))
    wrapped = E.Message(documentWithCaptionMessage=E.FutureProofMessage(message=inner))
    got = translate_message(
        "acme", event(E.Message(ephemeralMessage=E.FutureProofMessage(message=wrapped)))
    )
    assert (got.kind, got.text) == ("document", "c")


def test_reaction_location_contacts() -> None:
    key = C.MessageKey(ID="TARGET")
    got = translate_message(
        "acme", event(E.Message(reactionMessage=E.ReactionMessage(key=key, text="👍")))
    )
    assert (got.kind, got.reaction) == ("reaction", model.Reaction("TARGET", "👍"))
    loc = E.LocationMessage(
        degreesLatitude=-23.5, degreesLongitude=-46.6, name="Salon", address="Rua 1"
    )
    got = translate_message("acme", event(E.Message(locationMessage=loc)))
    assert got.location == model.Location(-23.5, -46.6, "Salon", "Rua 1")
    one = E.ContactMessage(displayName="Bo", vcard="BEGIN:VCARD\nEND:VCARD")
    got = translate_message("acme", event(E.Message(contactMessage=one)))
    assert got.contacts == (model.Contact("Bo", "BEGIN:VCARD\nEND:VCARD"),)
    many = E.ContactsArrayMessage(contacts=[one, E.ContactMessage(displayName="Cy")])
    got = translate_message("acme", event(E.Message(contactsArrayMessage=many)))
    assert [c.display_name for c in got.contacts] == ["Bo", "Cy"]


def test_anything_else_keeps_its_protobuf() -> None:
    msg = E.Message(pollCreationMessage=E.PollCreationMessage(name="Lunch?"))
    got = translate_message("acme", event(msg))
    assert got.kind == "other"
    assert E.Message.FromString(base64.b64decode(got.raw)) == msg


@pytest.mark.parametrize(
    ("name", "status"),
    [("DELIVERED", "delivered"), ("READ", "read"), ("PLAYED", "played"), ("READ_SELF", None),
     ("RETRY", None), ("SENDER", None)],
)  # fmt: skip
def test_receipts(name: str, status: str | None) -> None:
    kind = N.Receipt.DESCRIPTOR.fields_by_name["Type"].enum_type.values_by_name[name].number
    ev = ReceiptEv(
        MessageSource=N.MessageSource(Chat=CHAT, Sender=SENDER), MessageIDs=["A", "B"],
        Timestamp=1_700_000_001, Type=kind,
    )  # fmt: skip
    got = translate_receipt("acme", ev)
    if status is None:
        assert got is None
    else:
        assert got == model.Receipt(
            "acme",
            "5511999@s.whatsapp.net",
            "5511999:3@s.whatsapp.net",
            status,
            ("A", "B"),
            1_700_000_001.0,
        )
