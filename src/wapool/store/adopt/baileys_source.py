"""``--from-baileys FILE``: a Baileys auth state (``{"creds": ..., "keys": {type: {id: value}}}``
in the JSON form Baileys' ``BufferJSON`` writes; ``tools/baileys-dump.mjs`` makes it).

What becomes the whatsmeow device, and where it goes:

* ``creds``: noise key, identity key, signed pre-key (id, signature), registration id, ADV
  secret (``advSecretKey``, base64) and signed device identity (``account``), JID and LID
  (``me.id``, ``me.lid``), push name (``me.name``), platform -> ``whatsmeow_device``;
* ``pre-key``: the one-time pre-keys; those below ``creds.firstUnuploadedPreKeyId`` were
  uploaded -> ``whatsmeow_pre_keys``;
* ``app-state-sync-key`` -> ``whatsmeow_app_state_sync_keys`` (the fingerprint re-encoded as the
  protobuf whatsmeow stores);
* ``app-state-sync-version`` -> ``whatsmeow_app_state_version`` and its index/value MACs ->
  ``whatsmeow_app_state_mutation_macs``;
* ``lid-mapping`` -> ``whatsmeow_lid_map``.

Left out, and counted in the report: ``session`` and ``sender-key`` (libsignal-node's own record
formats; no conversion is proven to continue the same Signal session, so whatsmeow starts new
ones through WhatsApp's retry receipts, see docs/adopt.md), ``sender-key-memory``,
``device-list``, ``tctoken`` and ``identity-key`` (caches whatsmeow fills again).

One module, over the usual size, because it is one translation table: every Baileys field and
the whatsmeow column it becomes are read side by side here.
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from typing import Any

from wapool.store.adopt.source import DEVICE_TABLE, BadSource, Row, Taken

VERSION = 15
LEFT_OUT = ("session", "sender-key", "sender-key-memory", "device-list", "tctoken", "identity-key")


def take_baileys(path: Path) -> Taken:
    where = f"baileys {path}"
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadSource(f"{where}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadSource(f"{where}: cannot read it ({exc})") from None
    except ValueError as exc:
        raise BadSource(f"{where}: not JSON ({str(exc)[:80]})") from None
    if not isinstance(state, dict) or not isinstance(state.get("creds"), dict):
        raise BadSource(f'{where}: not a Baileys auth state (no "creds" object)')
    keys = state.get("keys") or {}
    if not isinstance(keys, dict):
        raise BadSource(f'{where}: "keys" is not an object')
    return _Reader(where, state["creds"], keys).taken()


class _Reader:
    def __init__(self, where: str, creds: dict[str, Any], keys: dict[str, Any]) -> None:
        self.where, self.creds, self.keys = where, creds, keys
        self.public: dict[str, bytes] = {}

    def taken(self) -> Taken:
        device = self._device()
        jid = str(device["jid"])
        tables: dict[str, list[Row]] = {
            DEVICE_TABLE: [device],
            "whatsmeow_pre_keys": self._pre_keys(jid),
            "whatsmeow_app_state_sync_keys": self._sync_keys(jid),
            "whatsmeow_lid_map": self._lid_map(),
        }
        versions, macs = self._app_state(jid)
        tables["whatsmeow_app_state_version"] = versions
        tables["whatsmeow_app_state_mutation_macs"] = macs
        left_out = {t: len(self._category(t)) for t in LEFT_OUT if self._category(t)}
        return Taken(
            self.where, jid, tables, VERSION, left_out=left_out, recorded_public=self.public
        )

    # -- creds -------------------------------------------------------------------------------

    def _device(self) -> Row:
        c = self.creds
        me = c.get("me")
        if not isinstance(me, dict) or not isinstance(me.get("id"), str):
            raise BadSource(
                f"{self.where}: creds.me.id is missing: the auth state was never paired"
            )
        account = c.get("account")
        if not isinstance(account, dict):
            raise BadSource(
                f"{self.where}: creds.account is missing: the auth state was never paired"
            )
        spk = self._object(c, "signedPreKey")
        lid = me.get("lid")
        return {
            "jid": _device_jid(me["id"]),
            "lid": _device_jid(lid) if isinstance(lid, str) and lid else None,
            "facebook_uuid": None,
            "registration_id": self._int(c, "registrationId"),
            "noise_key": self._pair("noiseKey", c, "noise_key"),
            "identity_key": self._pair("signedIdentityKey", c, "identity_key"),
            "signed_pre_key": self._pair("keyPair", spk, "signed_pre_key", "signedPreKey.keyPair"),
            "signed_pre_key_id": self._int(spk, "keyId", "signedPreKey.keyId"),
            "signed_pre_key_sig": self._bytes(spk.get("signature"), "signedPreKey.signature"),
            "adv_key": self._base64(c.get("advSecretKey"), "advSecretKey"),
            "adv_details": self._bytes(account.get("details"), "account.details"),
            "adv_account_sig": self._bytes(
                account.get("accountSignature"), "account.accountSignature"
            ),
            "adv_account_sig_key": self._bytes(
                account.get("accountSignatureKey"), "account.accountSignatureKey"
            ),
            "adv_device_sig": self._bytes(
                account.get("deviceSignature"), "account.deviceSignature"
            ),
            "platform": str(c.get("platform") or ""),
            "business_name": "",
            "push_name": str(me.get("name") or ""),
            "lid_migration_ts": 0,
            "companion_meta_nonce": "",
        }

    def _pair(
        self, name: str, parent: dict[str, Any], column: str, label: str | None = None
    ) -> bytes:
        label = label or name
        pair = self._object(parent, name, label)
        private = self._bytes(pair.get("private"), f"{label}.private", 32)
        self.public[column] = self._bytes(pair.get("public"), f"{label}.public", 32)
        return private

    # -- keys --------------------------------------------------------------------------------

    def _pre_keys(self, jid: str) -> list[Row]:
        first_unuploaded = int(self.creds.get("firstUnuploadedPreKeyId") or 0)
        rows: list[Row] = []
        for key_id, pair in sorted(self._category("pre-key").items(), key=lambda kv: int(kv[0])):
            label = f"pre-key {key_id}"
            if not isinstance(pair, dict):
                raise BadSource(f"{self.where}: {label} is not a key pair")
            self.public[label] = self._bytes(pair.get("public"), f"{label}.public", 32)
            rows.append({
                "jid": jid, "key_id": int(key_id),
                "key": self._bytes(pair.get("private"), f"{label}.private", 32),
                "uploaded": int(int(key_id) < first_unuploaded),
            })  # fmt: skip
        return rows

    def _sync_keys(self, jid: str) -> list[Row]:
        rows: list[Row] = []
        for key_id, data in sorted(self._category("app-state-sync-key").items()):
            label = f"app-state-sync-key {key_id}"
            if not isinstance(data, dict):
                raise BadSource(f"{self.where}: {label} is not an object")
            fingerprint = data.get("fingerprint") or {}
            rows.append({
                "jid": jid,
                "key_id": self._base64(key_id, f"{label} (its id)"),
                "key_data": self._bytes(data.get("keyData"), f"{label}.keyData", 32),
                "timestamp": self._long(data.get("timestamp"), f"{label}.timestamp"),
                "fingerprint": _fingerprint_proto(fingerprint),
            })  # fmt: skip
        return rows

    def _app_state(self, jid: str) -> tuple[list[Row], list[Row]]:
        versions: list[Row] = []
        macs: list[Row] = []
        for name, state in sorted(self._category("app-state-sync-version").items()):
            label = f"app-state-sync-version {name}"
            if not isinstance(state, dict):
                raise BadSource(f"{self.where}: {label} is not an object")
            version = int(state.get("version") or 0)
            hash_ = self._bytes(state.get("hash"), f"{label}.hash", 128)
            versions.append({"jid": jid, "name": name, "version": version, "hash": hash_})
            for index_mac, value in sorted((state.get("indexValueMap") or {}).items()):
                macs.append({
                    "jid": jid, "name": name, "version": version,
                    "index_mac": self._base64(index_mac, f"{label} index MAC", 32),
                    "value_mac": self._bytes(
                        (value or {}).get("valueMac"), f"{label} value MAC", 32
                    ),
                })  # fmt: skip
        return versions, macs

    def _lid_map(self) -> list[Row]:
        rows: list[Row] = []
        for pn, lid in sorted(self._category("lid-mapping").items()):
            if pn.endswith("_reverse") or not isinstance(lid, str):
                continue
            rows.append({"lid": lid, "pn": pn})
        return rows

    # -- values ------------------------------------------------------------------------------

    def _category(self, name: str) -> dict[str, Any]:
        found = self.keys.get(name) or {}
        if not isinstance(found, dict):
            raise BadSource(f"{self.where}: keys[{name!r}] is not an object")
        return {str(k): v for k, v in found.items() if v is not None}

    def _object(
        self, parent: dict[str, Any], name: str, label: str | None = None
    ) -> dict[str, Any]:
        value = parent.get(name)
        if not isinstance(value, dict):
            raise BadSource(f"{self.where}: creds.{label or name} is missing")
        return value

    def _int(self, parent: dict[str, Any], name: str, label: str | None = None) -> int:
        value = parent.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise BadSource(f"{self.where}: creds.{label or name} is not a non-negative integer")
        return value

    def _long(self, value: Any, label: str) -> int:
        """A protobuf int64 as JSON carries it: a number, a decimal string or ``{low, high}``."""
        if isinstance(value, dict) and {"low", "high"} <= value.keys():
            return (int(value["high"]) << 32) + (int(value["low"]) & 0xFFFFFFFF)
        try:
            return int(value or 0)
        except (TypeError, ValueError):
            raise BadSource(f"{self.where}: {label} is not a number") from None

    def _bytes(self, value: Any, label: str, length: int | None = None) -> bytes:
        raw = _buffer(value)
        if raw is None:
            raise BadSource(f"{self.where}: {label} is missing or not a Buffer")
        if length is not None and len(raw) != length:
            raise BadSource(f"{self.where}: {label} is {len(raw)} bytes, expected {length}")
        return raw

    def _base64(self, value: Any, label: str, length: int | None = None) -> bytes:
        if not isinstance(value, str):
            raise BadSource(f"{self.where}: {label} is not base64 text")
        return self._bytes(value, label, length)


def _buffer(value: Any) -> bytes | None:
    """A value as Baileys' BufferJSON (or protobuf's JSON: base64 text) writes bytes."""
    if isinstance(value, dict) and value.get("type") == "Buffer":
        value = value.get("data")
    elif isinstance(value, dict) and value and all(k.isdigit() for k in value):
        value = [value[k] for k in sorted(value, key=int)]
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return None
    if isinstance(value, list) and all(isinstance(b, int) and 0 <= b < 256 for b in value):
        return bytes(value)
    return None


def _device_jid(jid: str) -> str:
    """whatsmeow's form of a device JID: ``user:device@server`` (no agent, no ``:0``)."""
    user, _, server = jid.partition("@")
    user, _, device = user.partition(":")
    user = user.split(".", 1)[0]
    return f"{user}:{device}@{server}" if device and device != "0" else f"{user}@{server}"


def _fingerprint_proto(fingerprint: dict[str, Any]) -> bytes:
    """``AppStateSyncKeyFingerprint`` as whatsmeow marshals it (rawID = 1, currentIndex = 2,
    deviceIndexes = 3 packed; a test compares it with whatsmeow's own message)."""
    out = bytearray()
    for field, name in ((1, "rawId"), (2, "currentIndex")):
        if fingerprint.get(name) is not None:
            out += _varint(field << 3) + _varint(int(fingerprint[name]))
    indexes = [int(i) for i in fingerprint.get("deviceIndexes") or []]
    if indexes:
        packed = b"".join(_varint(i) for i in indexes)
        out += _varint(3 << 3 | 2) + _varint(len(packed)) + packed
    return bytes(out)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
