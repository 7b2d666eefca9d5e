"""Sealed step data: a sealed step's input and result are stored in the history as JWEs
(``{"$sealed": <JWE>}``, ECDH-ES+A256KW / A256GCM, see ``eventwire_security.seal``) to the
orchestrator's own X25519 key (derived from its identity) and to any ``readers``. The
history event stays signed and its other fields (step, target, action) readable, so
anyone can follow the workflow; only key holders see the data. Each seal is bound to the
workflow, the step and what it holds, so it cannot be moved to another place.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pydantic_core

from eventwire_security import SealingKey, open_seal, seal

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pydantic import JsonValue

    from eventwire_security import Identity, RecipientKey

__all__ = ["SEALED", "Sealer", "is_sealed"]

SEALED = "$sealed"


def is_sealed(value: object) -> bool:
    return isinstance(value, dict) and set(value) == {SEALED}


def _context(workflow_id: str, op: int, what: str) -> bytes:
    return f"eventwire-workflow|{workflow_id}|{op}|{what}".encode()


class Sealer:
    """Seals and opens step data as ``identity`` (the orchestrator), for it and ``readers``."""

    def __init__(self, identity: Identity, readers: Sequence[RecipientKey] = ()) -> None:
        self.kid = identity.kid
        self.key = SealingKey.derive(identity)
        self.recipients = [self.key.public, *readers]

    def seal(self, workflow_id: str, op: int, what: str, value: JsonValue) -> JsonValue:
        plaintext = pydantic_core.to_json(value)
        jwe = seal(
            plaintext, self.recipients, sender_kid=self.kid, context=_context(workflow_id, op, what)
        )
        return {SEALED: jwe}

    def open(self, workflow_id: str, op: int, what: str, value: JsonValue) -> JsonValue:
        """``value`` opened if it is sealed (raises the security package's seal errors if
        the seal is not for us or broken), else as it is."""
        if not is_sealed(value):
            return value
        jwe: Any = value[SEALED]  # type: ignore[index,call-overload] # checked by is_sealed
        plaintext = open_seal(
            jwe, self.key, expected_sender_kid=self.kid, context=_context(workflow_id, op, what)
        )
        return pydantic_core.from_json(plaintext, allow_inf_nan=False)  # type: ignore[no-any-return]  # a JSON value
