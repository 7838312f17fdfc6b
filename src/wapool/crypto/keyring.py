"""Master keys: where they come from, and what they are called.

A master key never comes from an environment variable or a ``.env`` value. It is read from the
systemd credential ``wapool-master-key`` (``LoadCredential=`` / ``LoadCredentialEncrypted=``,
under ``$CREDENTIALS_DIRECTORY``) or from the file ``WAPOOL_MASTER_KEY_FILE``. The file must be
mode 0600 (or stricter) and owned by the user wapool runs as; anything else is refused (a
credential's access is left to systemd).

The file holds one base64 key of 32 bytes per line: the first is the *current* key (it wraps
new data keys), the others are older keys kept only to unwrap data keys not yet re-wrapped
(``wapool keys rotate``). A key's id is a digest of the key, so a wrong key is told apart from
a right one without trying it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from wapool.errors import ConfigError

CREDENTIAL = "wapool-master-key"
KEY_BYTES = 32


@dataclass(frozen=True)
class MasterKey:
    key_id: str
    secret: bytes

    def __repr__(self) -> str:  # never the secret
        return f"MasterKey({self.key_id})"


@dataclass(frozen=True)
class Keyring:
    keys: tuple[MasterKey, ...]
    #: Where the keys came from, for messages (a path, never the key).
    source: str

    @property
    def current(self) -> MasterKey:
        return self.keys[0]

    def get(self, key_id: str) -> MasterKey | None:
        return next((k for k in self.keys if k.key_id == key_id), None)


def key_id(secret: bytes) -> str:
    return hashlib.sha256(b"wapool master key id\0" + secret).hexdigest()[:16]


def new_key() -> MasterKey:
    secret = secrets.token_bytes(KEY_BYTES)
    return MasterKey(key_id(secret), secret)


def encode(keys: list[MasterKey] | tuple[MasterKey, ...]) -> str:
    return "".join(base64.b64encode(k.secret).decode() + "\n" for k in keys)


def source_path(master_key_file: Path | None) -> tuple[Path, str] | None:
    """(path, what to call it in messages) of the configured key, or None when none is."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if directory and (Path(directory) / CREDENTIAL).exists():
        return Path(directory) / CREDENTIAL, f"systemd credential {CREDENTIAL}"
    if master_key_file is not None:
        return master_key_file, f"WAPOOL_MASTER_KEY_FILE ({master_key_file})"
    return None


def load(master_key_file: Path | None) -> Keyring | None:
    """The configured keyring, None when no key is configured; ConfigError naming the source
    when the key is unreadable, too open, someone else's, or not a key."""
    found = source_path(master_key_file)
    if found is None:
        return None
    path, name = found
    # A credential's access is systemd's: the directory is private to the unit, and systemd
    # may grant the service user access with an ACL on a root-owned file.
    return load_file(path, name, private=not name.startswith("systemd credential"))


def load_file(path: Path, name: str, *, private: bool = True) -> Keyring:
    """The keyring in ``path`` (called ``name`` in messages); unless ``private`` is False it
    must be 0600 (or stricter) and this user's."""
    try:
        info = path.stat()
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            [f"{name}: cannot read the master key: {exc.__class__.__name__}"]
        ) from None
    if private and info.st_uid != os.geteuid():
        raise ConfigError([f"{name}: owned by uid {info.st_uid}, not by this user"])
    if private and stat.S_IMODE(info.st_mode) & 0o077:
        raise ConfigError(
            [f"{name}: mode {stat.S_IMODE(info.st_mode):04o}, must be 0600 (or stricter)"]
        )
    keys: list[MasterKey] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            secret = base64.b64decode(line.strip(), validate=True)
        except binascii.Error:
            secret = b""
        if len(secret) != KEY_BYTES:
            raise ConfigError([f"{name}: line {number} is not a base64 key of {KEY_BYTES} bytes"])
        keys.append(MasterKey(key_id(secret), secret))
    if not keys:
        raise ConfigError([f"{name}: holds no key"])
    return Keyring(tuple(keys), name)


def write(path: Path, keys: list[MasterKey]) -> None:
    """Write ``keys`` (current first) to ``path``, mode 0600, replacing it atomically."""
    temp = path.with_name(f".{path.name}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, encode(keys).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)
