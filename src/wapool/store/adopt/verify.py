"""Refuse a device whose keys do not verify, before anything is written.

* every key has its length (32-byte keys, 64-byte signatures);
* each private key produces the public key the source records (Baileys records both halves;
  whatsmeow records only private keys, from which it derives the public ones as we do);
* the signed pre-key's signature verifies against the identity key (XEdDSA, see ``curve``);
* the ADV device signature, which the device made with its identity key when it was linked,
  verifies too: an identity key that is not the one the account linked is refused.
"""

from __future__ import annotations

from wapool.store.adopt import curve
from wapool.store.adopt.source import BadSource, Taken
from wapool.store.codec import SQLiteValue

_KEYS = {"noise_key": 32, "identity_key": 32, "signed_pre_key": 32, "signed_pre_key_sig": 64}
_ADV = {"adv_account_sig": 64, "adv_account_sig_key": 32, "adv_device_sig": 64}
#: whatsmeow's prefixes of the device signature (plain and hosted devices).
_DEVICE_SIG_PREFIXES = (b"\x06\x01", b"\x06\x06")


def check_keys(taken: Taken) -> None:
    """Raise ``BadSource`` (one line naming the key) unless every check holds."""
    device, where = taken.device, f"{taken.source}: device {taken.jid}"
    for column, length in {**_KEYS, **_ADV}.items():
        _length(device.get(column), length, f"{where}: {column}")
    identity = curve.public_key(_bytes(device["identity_key"]))
    for column, private in (
        ("noise_key", device["noise_key"]),
        ("identity_key", device["identity_key"]),
        ("signed_pre_key", device["signed_pre_key"]),
    ):
        recorded = taken.recorded_public.get(column)
        if recorded is not None and curve.public_key(_bytes(private)) != recorded:
            raise BadSource(
                f"{where}: {column}: the private key does not produce the recorded public key"
            )
    pre_key = curve.public_key(_bytes(device["signed_pre_key"]))
    if not curve.signed_pre_key_verifies(identity, pre_key, _bytes(device["signed_pre_key_sig"])):
        raise BadSource(
            f"{where}: the signed pre-key's signature does not verify against the identity key"
        )
    message = _bytes(device["adv_details"]) + identity + _bytes(device["adv_account_sig_key"])
    signature = _bytes(device["adv_device_sig"])
    if not any(curve.xeddsa_verify(identity, p + message, signature) for p in _DEVICE_SIG_PREFIXES):
        raise BadSource(
            f"{where}: the ADV device signature does not verify against the identity key "
            "(the identity key is not the one this device was linked with)"
        )
    _check_pre_keys(taken, where)


def _check_pre_keys(taken: Taken, where: str) -> None:
    recorded = taken.recorded_public
    for row in taken.tables.get("whatsmeow_pre_keys", []):
        key_id = str(row.get("key_id"))
        _length(row.get("key"), 32, f"{where}: pre-key {key_id}")
        public = recorded.get(f"pre-key {key_id}")
        if public is not None and curve.public_key(_bytes(row["key"])) != public:
            raise BadSource(
                f"{where}: pre-key {key_id}: the private key does not produce the recorded "
                "public key"
            )


def _length(value: SQLiteValue, length: int, what: str) -> None:
    if not isinstance(value, bytes):
        raise BadSource(f"{what}: missing (expected {length} bytes)")
    if len(value) != length:
        raise BadSource(f"{what}: {len(value)} bytes, expected {length}")


def _bytes(value: SQLiteValue) -> bytes:
    assert isinstance(value, bytes)
    return value
