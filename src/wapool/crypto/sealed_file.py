"""Encrypted export files: the whole export sealed with a key derived from a passphrase.

Layout: the line ``wapool-sealed-export 1``, one JSON line (scrypt parameters, salt, nonce),
then AES-256-GCM of the plain export file with both lines as associated data. Any change to
any byte — header or body — fails authentication, and the import says so in one line.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from wapool.errors import WapoolError

MAGIC = b"wapool-sealed-export 1\n"
#: scrypt cost: 2**17 x 8 x 1 (128 MiB, about a second), the OWASP recommendation.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**17, 8, 1
MAX_SCRYPT_N = 2**20  # a header asking for more is refused, not obeyed
MIN_PASSPHRASE = 8

Passphrase = Callable[[], bytes]


class SealedFileError(WapoolError):
    """A sealed export that is tampered with, truncated, or opened with the wrong passphrase."""


def is_sealed(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def check_passphrase(passphrase: bytes) -> bytes:
    if len(passphrase) < MIN_PASSPHRASE:
        raise WapoolError(f"the passphrase must have at least {MIN_PASSPHRASE} characters")
    return passphrase


def _key(passphrase: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase)


def seal(plain: bytes, passphrase: bytes, *, n: int = SCRYPT_N) -> bytes:
    salt, nonce = os.urandom(16), os.urandom(12)
    header = json.dumps(
        {"kdf": "scrypt", "n": n, "r": SCRYPT_R, "p": SCRYPT_P,
         "salt": base64.b64encode(salt).decode(), "nonce": base64.b64encode(nonce).decode()},
        sort_keys=True,
    ).encode() + b"\n"  # fmt: skip
    body = AESGCM(_key(passphrase, salt, n, SCRYPT_R, SCRYPT_P)).encrypt(
        nonce, plain, MAGIC + header
    )
    return MAGIC + header + body


def open_sealed(data: bytes, passphrase: bytes, source: Path) -> bytes:
    refused = SealedFileError(
        f"{source}: the encrypted export fails authentication: tampered, truncated or wrong "
        "passphrase; nothing was imported"
    )
    if not data.startswith(MAGIC):
        raise refused
    header, newline, body = data[len(MAGIC) :].partition(b"\n")
    try:
        params = json.loads(header)
        n, r, p = int(params["n"]), int(params["r"]), int(params["p"])
        salt = base64.b64decode(params["salt"], validate=True)
        nonce = base64.b64decode(params["nonce"], validate=True)
        if not newline or params["kdf"] != "scrypt" or not 1 < n <= MAX_SCRYPT_N:
            raise ValueError
        if not 0 < r <= 32 or not 0 < p <= 16 or len(nonce) != 12:
            raise ValueError
        key = _key(passphrase, salt, n, r, p)
        return AESGCM(key).decrypt(nonce, body, MAGIC + header + newline)
    except (InvalidTag, ValueError, KeyError, TypeError):
        raise refused from None
