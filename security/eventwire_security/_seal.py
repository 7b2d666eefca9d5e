"""Sealed data: a JWE (RFC 7516, General JSON Serialization) to one or more X25519 keys.

The content is encrypted once with A256GCM under a random content key; each recipient gets
that key wrapped with ECDH-ES+A256KW (RFC 7518 section 4.6, X25519 per RFC 8037) under a
fresh ephemeral key. The protected header names the sender's signing kid (``skid``) and is
part of the AAD, so sealed data cannot be re-signed by another agent as its own: a receiver
passes the envelope signer's kid as ``expected_sender_kid``. Opening is strict, and every
cryptographic failure is the same :class:`SealBroken`, which does not say what failed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._b64 import b64url_decode, b64url_encode
from ._errors import EnvelopeError, KeyRejected, SecurityError
from ._json import strict_loads

if TYPE_CHECKING:
    from collections.abc import Sequence

    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    from ._keys import Identity

SEAL_ALG = "ECDH-ES+A256KW"
SEAL_ENC = "A256GCM"
MAX_RECIPIENTS = 64
_KEY_BYTES = 32
_IV_BYTES = 12
_TAG_BYTES = 16
_WRAPPED_KEY_BYTES = _KEY_BYTES + 8
_MAX_PROTECTED_CHARS = 1024
_MAX_KID_CHARS = 128
_MAX_PARTY_INFO_BYTES = 256
# Concat KDF (NIST SP 800-56A, RFC 7518 section 4.6.2): AlgorithmID and SuppPubInfo.
_ALGORITHM_ID = struct.pack(">I", len(SEAL_ALG)) + SEAL_ALG.encode()
_KEYDATALEN = struct.pack(">I", _KEY_BYTES * 8)
_P = 2**255 - 19
# The u-coordinates of every point of order 2, 4 or 8, on the curve or its twist: X25519 of
# any of them with any (clamped) private key is all zeros. Aliases u >= p are refused anyway.
_ORDER_8_U = (
    325606250916557431795983626356110631294008115727848805560023387167927233504,
    39382357235489614581723060781553021112529911719440698176882885853963445705823,
)
_LOW_ORDER_U = frozenset({0, 1, _P - 1, *_ORDER_8_U})
_TOP_REQUIRED = frozenset({"protected", "recipients", "iv", "ciphertext", "tag"})
_TOP_ALLOWED = _TOP_REQUIRED | {"aad"}
_PROTECTED = frozenset({"enc", "skid"})
_HEADER_REQUIRED = frozenset({"alg", "kid", "epk"})
# "apu"/"apv" are the standard ECDH-ES parameters (RFC 7518 section 4.6.1): we never write
# them, but accept them from other implementations and feed them to the KDF as the RFC says.
_HEADER_ALLOWED = _HEADER_REQUIRED | {"apu", "apv"}
_EPK = frozenset({"kty", "crv", "x"})
_BROKEN = "the sealed data does not open with this key, sender and context"


class SealError(EnvelopeError):
    """Sealed data was refused when opened. ``reason`` is a short, stable machine code."""

    reason = "seal"


class MalformedSeal(SealError):
    """Not a JWE of the expected shape: members, types, algorithms, base64url or sizes."""

    reason = "malformed-seal"


class NotARecipient(SealError):
    """No recipient entry names the kid of the key that tried to open the data."""

    reason = "not-a-recipient"


class SealBroken(SealError):
    """Decryption failed: tampered, wrong key, or another context. Deliberately no detail."""

    reason = "seal-broken"


class SealSenderMismatch(SealError):
    """The ``skid`` sealed in the protected header is not the expected sender (re-signing)."""

    reason = "seal-sender-mismatch"


class InvalidRecipients(SecurityError, ValueError):
    """``seal`` was given no recipients, too many, duplicates, or something not a key."""

    reason = "invalid-recipients"

    def __init__(self, detail: str) -> None:
        super().__init__(f"{self.reason}: {detail}")
        self.detail = detail


def _thumbprint(raw: bytes) -> str:
    members = {"crv": "X25519", "kty": "OKP", "x": b64url_encode(raw).decode()}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return b64url_encode(hashlib.sha256(canonical).digest()).decode()


def _jwk_x(jwk: object) -> bytes:
    """The key in exactly ``{"kty": "OKP", "crv": "X25519", "x": ...}``; ValueError if not."""
    if (
        not isinstance(jwk, Mapping)
        or set(jwk) != _EPK
        or (jwk["kty"], jwk["crv"]) != ("OKP", "X25519")
        or not isinstance(jwk["x"], str)
    ):
        raise ValueError("expected an X25519 public JWK with exactly kty, crv and x")
    raw = b64url_decode(jwk["x"].encode("ascii"))  # ValueError, as is UnicodeEncodeError
    if len(raw) != _KEY_BYTES or int.from_bytes(raw, "little") >= _P:
        raise ValueError("x is not a canonical 32-byte X25519 public key")
    return raw


@dataclass(frozen=True, slots=True)
class RecipientKey:
    """An X25519 public key data can be sealed to. ``kid`` is its RFC 7638 thumbprint."""

    raw: bytes
    kid: str = field(init=False, compare=False)
    _public: X25519PublicKey = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

        if not isinstance(self.raw, bytes) or len(self.raw) != _KEY_BYTES:
            raise KeyRejected("an X25519 public key is 32 bytes")
        u = int.from_bytes(self.raw, "little")
        if u >= _P:  # includes every encoding with the top bit set
            raise KeyRejected("non-canonical X25519 public key")
        if u in _LOW_ORDER_U:
            raise KeyRejected("small-order X25519 public key")
        object.__setattr__(self, "kid", _thumbprint(self.raw))
        object.__setattr__(self, "_public", X25519PublicKey.from_public_bytes(self.raw))

    @classmethod
    def from_jwk(cls, jwk: Mapping[str, Any]) -> RecipientKey:
        """Read exactly ``{"kty": "OKP", "crv": "X25519", "x": ...}``."""
        try:
            raw = _jwk_x(jwk)
        except ValueError as exc:
            raise KeyRejected(str(exc)) from None
        return cls(raw)

    def to_jwk(self) -> dict[str, str]:
        return {"kty": "OKP", "crv": "X25519", "x": b64url_encode(self.raw).decode()}


_DERIVE_INFO = b"eventwire/seal/x25519/v1"


class SealingKey:
    """An agent's private X25519 key for opening sealed data (separate from its signing key)."""

    __slots__ = ("_private", "public")

    def __init__(self, private_bytes: bytes) -> None:
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        if not isinstance(private_bytes, bytes) or len(private_bytes) != _KEY_BYTES:
            raise KeyRejected("an X25519 private key is 32 bytes")
        self._private = X25519PrivateKey.from_private_bytes(private_bytes)
        self.public = RecipientKey(self._private.public_key().public_bytes_raw())

    @classmethod
    def generate(cls) -> SealingKey:
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        return cls(X25519PrivateKey.generate().private_bytes_raw())

    @classmethod
    def from_private_bytes(cls, data: bytes) -> SealingKey:
        return cls(data)

    @classmethod
    def derive(cls, identity: Identity) -> SealingKey:
        """The sealing key of an identity, derived from its seed (HKDF-SHA256), so that
        every instance of an agent holding the identity opens what is sealed to it. The
        signing key itself is never used for encryption."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        okm = HKDF(
            algorithm=hashes.SHA256(), length=_KEY_BYTES, salt=None, info=_DERIVE_INFO
        ).derive(identity.seed)
        return cls(okm)

    @property
    def kid(self) -> str:
        return self.public.kid

    @property
    def private_bytes(self) -> bytes:
        """The 32-byte private key. Handle with care: never log or send it."""
        return self._private.private_bytes_raw()

    def _exchange(self, peer: bytes) -> bytes:
        """X25519 with ``peer``; ``ValueError`` on a wrong length or an all-zero result."""
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

        return self._private.exchange(X25519PublicKey.from_public_bytes(peer))

    def __repr__(self) -> str:
        return f"SealingKey(kid={self.kid!r})"


def _kek(shared: bytes, apu: bytes = b"", apv: bytes = b"") -> bytes:
    """The key-encryption key: Concat KDF over the shared secret (RFC 7518 section 4.6.2)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash

    party_info = struct.pack(">I", len(apu)) + apu + struct.pack(">I", len(apv)) + apv
    kdf = ConcatKDFHash(hashes.SHA256(), _KEY_BYTES, _ALGORITHM_ID + party_info + _KEYDATALEN)
    return kdf.derive(shared)


@functools.lru_cache(maxsize=1024)
def _protected_b64(sender_kid: str) -> bytes:
    header = {"enc": SEAL_ENC, "skid": sender_kid}
    return b64url_encode(json.dumps(header, separators=(",", ":")).encode())


def _aad(protected_b64: bytes, aad_b64: bytes | None) -> bytes:
    """RFC 7516 section 5.1 step 14: ``protected`` or ``protected "." aad``."""
    return protected_b64 if aad_b64 is None else protected_b64 + b"." + aad_b64


def _check_recipients(recipients: Sequence[RecipientKey]) -> list[RecipientKey]:
    if isinstance(recipients, RecipientKey | str | bytes | Mapping):
        raise InvalidRecipients("recipients must be a sequence of RecipientKey")
    keys = list(recipients)
    if not keys:
        raise InvalidRecipients("at least one recipient is needed")
    if len(keys) > MAX_RECIPIENTS:
        raise InvalidRecipients(f"{len(keys)} recipients > limit {MAX_RECIPIENTS}")
    if not all(isinstance(key, RecipientKey) for key in keys):
        raise InvalidRecipients("recipients must be RecipientKey instances (not private keys)")
    if len({key.kid for key in keys}) != len(keys):
        raise InvalidRecipients("the same recipient key is listed twice")
    return keys


def _check_kid_argument(kid: str) -> None:
    if not isinstance(kid, str):
        raise TypeError(f"sender kid must be a str, got {type(kid).__name__}")
    if not 0 < len(kid) <= _MAX_KID_CHARS:
        raise ValueError(f"sender kid must have 1 to {_MAX_KID_CHARS} characters")


def _wrap_for(key: RecipientKey, cek: bytes) -> dict[str, Any]:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.keywrap import aes_key_wrap

    ephemeral = X25519PrivateKey.generate()
    try:
        shared = ephemeral.exchange(key._public)
    except ValueError:  # all-zero shared secret: a small-order point slipped through
        raise KeyRejected("small-order X25519 public key", key.kid) from None
    epk = b64url_encode(ephemeral.public_key().public_bytes_raw()).decode()
    return {
        "header": {
            "alg": SEAL_ALG,
            "kid": key.kid,
            "epk": {"kty": "OKP", "crv": "X25519", "x": epk},
        },
        "encrypted_key": b64url_encode(aes_key_wrap(_kek(shared), cek)).decode(),
    }


def seal(
    plaintext: bytes,
    recipients: Sequence[RecipientKey],
    *,
    sender_kid: str,
    context: bytes = b"",
) -> dict[str, Any]:
    """Encrypt ``plaintext`` to ``recipients`` as a general JSON JWE bound to ``sender_kid``.

    ``context`` (e.g. the event subject and id) is authenticated as the JWE AAD and must be
    given again to :func:`open_seal`.
    """
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if not isinstance(plaintext, bytes) or not isinstance(context, bytes):
        raise TypeError("plaintext and context must be bytes")
    _check_kid_argument(sender_kid)
    keys = _check_recipients(recipients)
    cek = AESGCM.generate_key(bit_length=_KEY_BYTES * 8)
    entries = [_wrap_for(key, cek) for key in keys]
    protected_b64 = _protected_b64(sender_kid)
    aad_b64 = b64url_encode(context) if context else None
    iv = os.urandom(_IV_BYTES)
    sealed = AESGCM(cek).encrypt(iv, plaintext, _aad(protected_b64, aad_b64))
    jwe: dict[str, Any] = {"protected": protected_b64.decode(), "recipients": entries}
    if aad_b64 is not None:
        jwe["aad"] = aad_b64.decode()
    jwe["iv"] = b64url_encode(iv).decode()
    jwe["ciphertext"] = b64url_encode(sealed[:-_TAG_BYTES]).decode()
    jwe["tag"] = b64url_encode(sealed[-_TAG_BYTES:]).decode()
    return jwe


@dataclass(frozen=True, slots=True)
class _Entry:
    epk: bytes
    encrypted_key: bytes
    apu: bytes
    apv: bytes


@dataclass(frozen=True, slots=True)
class _Parsed:
    protected_b64: bytes
    skid: str
    aad_b64: bytes | None
    entries: dict[str, Mapping[str, Any]]
    iv: bytes
    ciphertext: bytes
    tag: bytes


def _ascii(value: object, name: str) -> bytes:
    if not isinstance(value, str):
        raise MalformedSeal(f"{name} must be a string")
    try:
        return value.encode("ascii")
    except UnicodeEncodeError:
        raise MalformedSeal(f"{name} is not base64url") from None


def _decode(value: object, name: str, size: int | None = None, limit: int | None = None) -> bytes:
    try:
        data = b64url_decode(_ascii(value, name))
    except ValueError as exc:
        raise MalformedSeal(f"{name}: {exc}") from None
    if size is not None and len(data) != size:
        raise MalformedSeal(f"{name} must be {size} bytes, got {len(data)}")
    if limit is not None and len(data) > limit:
        raise MalformedSeal(f"{name} is longer than {limit} bytes")
    return data


def _kid(value: object, name: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_KID_CHARS:
        raise MalformedSeal(f"{name} must be a string of 1 to {_MAX_KID_CHARS} characters")
    return value


@functools.lru_cache(maxsize=1024)
def _read_protected(protected_b64: bytes) -> str:
    """The ``skid`` of a protected header; cached, as a sender's header rarely changes."""
    if len(protected_b64) > _MAX_PROTECTED_CHARS:
        raise MalformedSeal("protected header too large")
    try:
        header = strict_loads(b64url_decode(protected_b64), max_depth=2)
    except ValueError as exc:
        raise MalformedSeal(f"protected header: {exc}") from None
    if not isinstance(header, dict):
        raise MalformedSeal("protected header must be a JSON object")
    for refused in ("crit", "zip"):
        if refused in header:
            raise MalformedSeal(f"{refused!r} is not supported")
    if set(header) != _PROTECTED:
        raise MalformedSeal("protected header must have exactly 'enc' and 'skid'")
    if header["enc"] != SEAL_ENC:
        raise MalformedSeal(f"enc must be {SEAL_ENC!r}")
    return _kid(header["skid"], "skid")


def _read_entry(item: object) -> tuple[str, Mapping[str, Any]]:
    """Check the members, alg and kid of a recipient entry (every entry, every time)."""
    if not isinstance(item, Mapping) or set(item) != {"header", "encrypted_key"}:
        raise MalformedSeal("a recipient must have exactly 'header' and 'encrypted_key'")
    header = item["header"]
    if not isinstance(header, Mapping) or not _HEADER_REQUIRED <= set(header) <= _HEADER_ALLOWED:
        raise MalformedSeal("a recipient header must have 'alg', 'kid', 'epk' (+ 'apu', 'apv')")
    if header["alg"] != SEAL_ALG:
        raise MalformedSeal(f"alg must be {SEAL_ALG!r}")
    return _kid(header["kid"], "kid"), item


def _decode_entry(item: Mapping[str, Any]) -> _Entry:
    """Decode the keys of the opener's own entry (the others are never used)."""
    header = item["header"]
    try:
        epk = _jwk_x(header["epk"])
    except ValueError as exc:
        raise MalformedSeal(f"epk: {exc}") from None
    apu, apv = (
        _decode(header[name], name, limit=_MAX_PARTY_INFO_BYTES) if name in header else b""
        for name in ("apu", "apv")
    )
    wrapped = _decode(item["encrypted_key"], "encrypted_key", size=_WRAPPED_KEY_BYTES)
    return _Entry(epk=epk, encrypted_key=wrapped, apu=apu, apv=apv)


def _read_recipients(value: object) -> dict[str, Mapping[str, Any]]:
    if not isinstance(value, list | tuple) or not value:
        raise MalformedSeal("recipients must be a non-empty array")
    if len(value) > MAX_RECIPIENTS:
        raise MalformedSeal(f"{len(value)} recipients > limit {MAX_RECIPIENTS}")
    entries: dict[str, Mapping[str, Any]] = {}
    for item in value:
        kid, entry = _read_entry(item)
        if kid in entries:
            raise MalformedSeal("two recipients have the same kid")
        entries[kid] = entry
    return entries


def _parse(jwe: object) -> _Parsed:
    if not isinstance(jwe, Mapping):
        raise MalformedSeal(f"expected a JSON object, got {type(jwe).__name__}")
    members = set(jwe)
    if not _TOP_REQUIRED <= members <= _TOP_ALLOWED:
        raise MalformedSeal(f"members must be {sorted(_TOP_REQUIRED)} and optionally 'aad'")
    protected_b64 = _ascii(jwe["protected"], "protected")
    skid = _read_protected(protected_b64)
    aad_b64 = None
    if "aad" in jwe:
        aad_b64 = _ascii(jwe["aad"], "aad")
        if not _decode(jwe["aad"], "aad"):
            raise MalformedSeal("aad must be omitted when empty")
    return _Parsed(
        protected_b64=protected_b64,
        skid=skid,
        aad_b64=aad_b64,
        entries=_read_recipients(jwe["recipients"]),
        iv=_decode(jwe["iv"], "iv", size=_IV_BYTES),
        ciphertext=_decode(jwe["ciphertext"], "ciphertext"),
        tag=_decode(jwe["tag"], "tag", size=_TAG_BYTES),
    )


def _decrypt(parsed: _Parsed, entry: _Entry, key: SealingKey) -> bytes:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap

    try:
        kek = _kek(key._exchange(entry.epk), entry.apu, entry.apv)
        cek = aes_key_unwrap(kek, entry.encrypted_key)
        aad = _aad(parsed.protected_b64, parsed.aad_b64)
        return AESGCM(cek).decrypt(parsed.iv, parsed.ciphertext + parsed.tag, aad)
    except (ValueError, InvalidUnwrap, InvalidTag):
        raise SealBroken(_BROKEN, kid=key.kid) from None


def open_seal(
    jwe: Mapping[str, Any],
    key: SealingKey,
    *,
    expected_sender_kid: str,
    context: bytes = b"",
) -> bytes:
    """Decrypt a JWE made by :func:`seal` (or any JOSE library) for ``key``.

    Checks, in order: shape (:class:`MalformedSeal`), the sealed sender
    (:class:`SealSenderMismatch`), an entry for ``key`` (:class:`NotARecipient`), that
    entry's keys (:class:`MalformedSeal`), then the context and the cryptography
    (:class:`SealBroken`, whatever failed).
    """
    if not isinstance(key, SealingKey) or not isinstance(context, bytes):
        raise TypeError("key must be a SealingKey and context bytes")
    _check_kid_argument(expected_sender_kid)
    parsed = _parse(jwe)
    if parsed.skid != expected_sender_kid:
        raise SealSenderMismatch(
            f"sealed by {parsed.skid!r}, expected {expected_sender_kid!r}", kid=parsed.skid
        )
    item = parsed.entries.get(key.kid)
    if item is None:
        raise NotARecipient("no recipient entry for this key", kid=key.kid)
    entry = _decode_entry(item)
    if parsed.aad_b64 != (b64url_encode(context) if context else None):
        raise SealBroken(_BROKEN, kid=key.kid)
    return _decrypt(parsed, entry, key)
