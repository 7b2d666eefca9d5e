"""eventwire_security: keys, keyrings and signed envelopes. Pure: no NATS, no asyncio."""

from ._envelope import (
    ALG,
    DEFAULT_MAX_BYTES,
    VerifiedEnvelope,
    encode_claims,
    message_id,
    sign_claims,
    sign_payload,
    verify_envelope,
)
from ._errors import (
    BadSignature,
    EnvelopeError,
    InvalidName,
    KeyNotValid,
    KeyRejected,
    MalformedClaims,
    MalformedEnvelope,
    OversizedEnvelope,
    OwnerMismatch,
    SecurityError,
    UnknownKey,
)
from ._keyring import Keyring
from ._keys import Identity, Principal, PublicKey, TrustedKey, check_name

__all__ = [
    "ALG",
    "DEFAULT_MAX_BYTES",
    "BadSignature",
    "EnvelopeError",
    "Identity",
    "InvalidName",
    "KeyNotValid",
    "KeyRejected",
    "Keyring",
    "MalformedClaims",
    "MalformedEnvelope",
    "OversizedEnvelope",
    "OwnerMismatch",
    "Principal",
    "PublicKey",
    "SecurityError",
    "TrustedKey",
    "UnknownKey",
    "VerifiedEnvelope",
    "check_name",
    "encode_claims",
    "message_id",
    "sign_claims",
    "sign_payload",
    "verify_envelope",
]
