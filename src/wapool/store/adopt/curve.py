"""The two Curve25519 checks adoption makes on a device's keys.

* A private key must produce the public key the source records (X25519).
* The signed pre-key's signature must verify against the identity key. WhatsApp (libsignal)
  signs with the *Curve25519* identity key using XEdDSA: the Montgomery public key ``u`` is
  mapped to the Edwards point with ``y = (u - 1) / (u + 1)``, the sign bit of ``x`` travels in
  the signature's last byte, and the result is an ordinary Ed25519 verification. The signed
  message is the pre-key's public key with libsignal's type byte ``0x05`` in front.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

KEY_LENGTH = 32
SIGNATURE_LENGTH = 64
#: libsignal's "DJB" key type, prefixed to a Curve25519 public key before it is signed.
DJB_TYPE = b"\x05"
_P = 2**255 - 19


def public_key(private: bytes) -> bytes:
    """The X25519 public key of a 32-byte private key (clamped as every implementation does)."""
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def xeddsa_verify(public: bytes, message: bytes, signature: bytes) -> bool:
    """Does ``signature`` (64 bytes) over ``message`` verify against the Curve25519 ``public``?"""
    if len(public) != KEY_LENGTH or len(signature) != SIGNATURE_LENGTH:
        return False
    u = int.from_bytes(public, "little") & ((1 << 255) - 1)
    if (u + 1) % _P == 0:
        return False  # no Edwards point for u = -1
    y = (u - 1) * pow(u + 1, _P - 2, _P) % _P
    edwards = bytearray(y.to_bytes(KEY_LENGTH, "little"))
    edwards[31] |= signature[63] & 0x80
    plain = bytearray(signature)
    plain[63] &= 0x7F
    try:
        Ed25519PublicKey.from_public_bytes(bytes(edwards)).verify(bytes(plain), message)
    except (InvalidSignature, ValueError):
        return False
    return True


def signed_pre_key_verifies(identity_public: bytes, pre_key_public: bytes, sig: bytes) -> bool:
    return xeddsa_verify(identity_public, DJB_TYPE + pre_key_public, sig)
