"""Low-level pieces of the envelopes: signing inputs, serializations and two-step reading.

Hazardous materials, as in ``cryptography``: each piece is correct, but combining them
correctly is on the caller. Prefer :func:`eventwire_security.sign_event`,
:func:`eventwire_security.verify_event`, :func:`eventwire_security.sign_claims` and
:func:`eventwire_security.verify_envelope`. An :class:`UnverifiedEnvelope` is checked by its
:meth:`~UnverifiedEnvelope.verify`, which raises; nothing here returns a verdict to forget.
``verify`` is two steps, which a caller may run apart (the signature on a worker thread):
:meth:`~UnverifiedEnvelope.check_signature` returns a :class:`SignatureChecked`, whose
:meth:`~SignatureChecked.parse` reads the claims.
"""

from ._claims_json import encode_claims
from ._envelope import (
    SignatureChecked,
    UnverifiedEnvelope,
    compact,
    detached_signing_input,
    read_detached,
    read_envelope,
    sign_detached,
    sign_payload,
    signing_input,
)

__all__ = [
    "SignatureChecked",
    "UnverifiedEnvelope",
    "compact",
    "detached_signing_input",
    "encode_claims",
    "read_detached",
    "read_envelope",
    "sign_detached",
    "sign_payload",
    "signing_input",
]
