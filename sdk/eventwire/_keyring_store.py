"""The signed keyring document, distributed through a KV bucket and applied live.

Bucket ``<root>-keyring``, key ``current``, history 10. Admins put a new signed
:class:`KeyringDocument` version there (:func:`publish_keyring`); every receiver runs a
:class:`KeyringWatcher`, which verifies each value against the admins' keyring and applies
accepted versions to the receiver's :class:`Keyring` in place.

The watcher replays the key's history (oldest first) before following it, so a fresh
watcher ends at the highest version in the history and refuses a rollback put later. A
receiver that keeps the document it applied can pass it as ``held`` after a restart, to
refuse anything older even once the history has moved on. Refused values (bad signature,
unknown admin, rollback, same version with other content, a deleted key, a kid that would
change owner) go to ``on_refused`` and are never applied: the receiver keeps its keys.

Applying a document: every entry is added (or its expiry updated, or its revocation applied);
an entry that a later version no longer lists is revoked; keys the application added itself
are left alone; a key revoked locally stays revoked. A document that would bind a known kid
to another owner is refused as a whole.

Documents on disk (the CLI's working copies) are the compact JWS bytes, written atomically
to a new file (hard-linked into place: never over an existing one) or in place only if the
file still holds the bytes read.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

import nats.errors
import nats.js.errors

from eventwire_security import (
    DEFAULT_MAX_BYTES,
    EnvelopeError,
    Identity,
    Keyring,
    SecurityError,
    TrustedKey,
)
from eventwire_security import keyring_bucket as keyring_bucket  # noqa: PLC0414 - re-export
from eventwire_security._files import write_atomic
from eventwire_security._json import strict_loads
from eventwire_security._keyring_doc import KeyEntry, KeyringDocument

from ._buckets import open_bucket
from ._errors import BusyResource, EventwireError, TransportError
from ._streams import keyring_config
from ._supervisor import Loop, is_transport_error
from ._watch import start_watch, stop_watch

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable
    from types import TracebackType

    from nats.js import JetStreamContext
    from nats.js.kv import KeyValue

log = logging.getLogger("eventwire.keyring")
KEYRING_KEY = "current"


class KeyringError(EventwireError):
    """A keyring document could not be read, verified, applied, written or published.

    ``reason`` is a stable code (the security error's, e.g. ``keyring-rollback``, or one of
    ours: ``keyring-owner-conflict``, ``keyring-exists``, ``keyring-changed``...).
    """

    def __init__(self, message: str, *, reason: str, error: Exception | None = None) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.error = error


@dataclass(frozen=True, slots=True)
class KeyringRefusal:
    """A value of the keyring key that was not applied, and why."""

    revision: int
    reason: str
    detail: str
    error: Exception | None


def _refused(exc: SecurityError, where: str = "") -> KeyringError:
    if isinstance(exc, EnvelopeError):
        return KeyringError(where + exc.detail, reason=exc.reason, error=exc)
    return KeyringError(where + str(exc), reason="keyring-invalid", error=exc)


async def open_keyring_bucket(
    js: JetStreamContext, root: str, *, replicas: int = 1, create: bool = True
) -> KeyValue:
    """Bind to the keyring bucket, creating it if absent (if ``create``)."""
    return await open_bucket(js, keyring_config(root, replicas=replicas), create=create)


async def publish_keyring(
    js: JetStreamContext,
    root: str,
    token: bytes,
    *,
    admins: Keyring | None = None,
    replicas: int = 1,
) -> int:
    """Put ``token`` as the current keyring document; returns the KV revision.

    With ``admins`` the token must verify against them and be newer than the valid document
    in the bucket (a rollback is refused here already, not only by receivers), and the put
    fails if another admin published in between.
    """
    kv = await open_keyring_bucket(js, root, replicas=replicas)
    try:
        if admins is None:
            return int(await kv.put(KEYRING_KEY, token))
        held, revision = await _current(kv, admins)
        _verify(token, admins, held)
        if revision == 0:
            return int(await kv.create(KEYRING_KEY, token))
        return int(await kv.update(KEYRING_KEY, token, last=revision))
    except nats.js.errors.KeyWrongLastSequenceError as exc:
        raise KeyringError(
            "another version was published meanwhile", reason="keyring-changed"
        ) from exc
    except (nats.errors.Error, TimeoutError) as exc:
        raise KeyringError(repr(exc), reason="keyring-publish-failed", error=exc) from exc


async def _current(kv: KeyValue, admins: Keyring) -> tuple[KeyringDocument | None, int]:
    """The valid document in the bucket (``None`` if none or invalid) and its revision."""
    try:
        entry = await kv.get(KEYRING_KEY)
    except nats.js.errors.KeyNotFoundError:
        return None, 0
    revision = int(entry.revision or 0)
    try:
        return KeyringDocument.verify(entry.value or b"", admins, min_version=0), revision
    except SecurityError:
        return None, revision


def _verify(token: bytes, admins: Keyring, held: KeyringDocument | None) -> KeyringDocument:
    version = 0 if held is None else held.version
    try:
        return KeyringDocument.verify(token, admins, min_version=version, current=held)
    except SecurityError as exc:
        raise _refused(exc) from None
    except (ValueError, TypeError) as exc:  # not expected; never let it stop the watcher
        raise KeyringError(repr(exc), reason="keyring-invalid", error=exc) from None


def _check(entry: KeyValue.Entry, admins: Keyring, held: KeyringDocument | None) -> KeyringDocument:
    """The document in ``entry`` if it verifies and may follow ``held``; else KeyringError."""
    if entry.operation is not None:
        detail = f"the keyring key was removed ({entry.operation})"
        raise KeyringError(detail, reason="keyring-deleted")
    return _verify(entry.value or b"", admins, held)


async def _notify(callback: Callable[[Any], Awaitable[None] | None] | None, value: object) -> None:
    """Call a user callback (sync or async); its failure is logged, never propagated."""
    if callback is None:
        return
    try:
        result = callback(value)
        if inspect.isawaitable(result):
            await result
    except Exception:
        log.exception("keyring callback %r failed", callback)


class KeyringWatcher:
    """Keeps ``target`` in step with the signed keyring document in the KV bucket.

    ``async with KeyringWatcher(js, root, admins, target) as watcher:`` loads the current
    document (replaying the key's history, see the module doc) before the block starts,
    then applies new versions as they are published, until the block ends. ``on_refused``
    gets a :class:`KeyringRefusal` for each value not applied, ``on_applied`` each document
    applied; both may be sync or async and are called on the event loop.

    The watch runs in a supervised task (``_supervisor``) that the block's end always
    stops: if NATS fails under it, it is logged, counted in :attr:`restarts` and watched
    again (catching up on the history); any other error is logged, kept in :attr:`error`
    and :attr:`running` turns false: the keyring is no longer kept in step.
    """

    def __init__(  # noqa: PLR0913 - public constructor: the watch, then optional keywords
        self,
        js: JetStreamContext,
        root: str,
        admins: Keyring,
        target: Keyring,
        *,
        on_refused: Callable[[KeyringRefusal], Awaitable[None] | None] | None = None,
        on_applied: Callable[[KeyringDocument], Awaitable[None] | None] | None = None,
        held: KeyringDocument | None = None,
        replicas: int = 1,
        timeout: float = 10.0,
        create: bool = True,
    ) -> None:
        self._js = js
        self._create = create
        self._root = root
        self._admins = admins
        self._target = target
        self._on_refused = on_refused
        self._on_applied = on_applied
        self._document = held
        self._kids = frozenset(entry.kid for entry in held.keys) if held else frozenset()
        self._replicas = replicas
        self._timeout = timeout
        self._watcher: KeyValue.KeyWatcher | None = None
        self._loop: Loop | None = None
        self.error: BaseException | None = None

    @property
    def running(self) -> bool:
        """Whether the watch is being followed (false before, after, or once it failed)."""
        return self._loop is not None and self._loop.running

    @property
    def restarts(self) -> int:
        """How often the watch was started again after NATS failed under it."""
        return 0 if self._loop is None else self._loop.restarts

    @property
    def document(self) -> KeyringDocument | None:
        """The last document applied (or ``held``)."""
        return self._document

    @property
    def version(self) -> int:
        """The version of :attr:`document`, 0 before any."""
        return 0 if self._document is None else self._document.version

    async def __aenter__(self) -> Self:
        if self._loop is not None:
            raise BusyResource("this KeyringWatcher was started before")
        self._loop = Loop(
            f"eventwire-keyring:{self._root}", self._run,
            transient=is_transport_error, on_failure=self._failed, logger=log,
        )  # fmt: skip
        await self._watch()
        self._loop.start()
        return self

    async def _watch(self) -> KeyValue.KeyWatcher:
        """Watch the key and catch up on its history; on failure nothing is left open."""
        kv = await open_keyring_bucket(
            self._js, self._root, replicas=self._replicas, create=self._create
        )
        self._watcher = watcher = await start_watch(kv.watch(KEYRING_KEY, include_history=True))
        try:
            await self._catch_up(watcher)
        except BaseException:
            await self._stop_watch()
            raise
        return watcher

    async def _run(self) -> None:
        """One run of the loop: (after a restart, watch again) then follow the key."""
        watcher = self._watcher or await self._watch()
        try:
            await self._follow(watcher)
        finally:
            await self._stop_watch()
        raise TransportError("the keyring watch ended")  # not stopped by us: watch again

    def _failed(self, error: BaseException) -> None:
        self.error = error
        log.error("the keyring watch stopped (%r): keyring changes are not applied", error)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop()

    async def _stop(self) -> None:
        if self._loop is not None:
            await self._loop.stop(cancel=True)
        await self._stop_watch()

    async def _stop_watch(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            await stop_watch(watcher)

    async def _catch_up(self, watcher: KeyValue.KeyWatcher) -> None:
        """Check the history in order and apply only the last version accepted.

        Refusals of superseded values are logged, not reported: only the current value's.
        """
        best, revision = self._document, 0
        while True:
            try:
                async with asyncio.timeout(self._timeout):
                    entry = await anext(watcher)
            except TimeoutError as exc:
                raise KeyringError("no answer from the bucket", reason="keyring-timeout") from exc
            if entry is None:
                break
            try:
                best, revision = _check(entry, self._admins, best), int(entry.revision or 0)
            except KeyringError as exc:
                if entry.delta:
                    log.debug("superseded keyring value %s refused: %s", entry.revision, exc)
                else:
                    await self._refuse(int(entry.revision or 0), exc)
        if best is not None and best != self._document:
            await self._install(best, revision)

    async def _follow(self, watcher: KeyValue.KeyWatcher) -> None:
        async for entry in watcher:
            if entry is None:
                continue
            revision = int(entry.revision or 0)
            try:
                document = _check(entry, self._admins, self._document)
            except KeyringError as exc:
                await self._refuse(revision, exc)
                continue
            if document != self._document:
                await self._install(document, revision)

    async def _install(self, document: KeyringDocument, revision: int) -> None:
        try:
            self._apply(document)
        except KeyringError as exc:
            await self._refuse(revision, exc)
            return
        log.info("keyring version %d applied (%d keys)", document.version, len(document.keys))
        await _notify(self._on_applied, document)

    def _apply(self, document: KeyringDocument) -> None:
        """Apply ``document`` to the target keyring entirely, or raise and change nothing."""
        target = self._target
        for entry in document.keys:
            if entry.kid in target and target.get(entry.kid).principal != entry.principal:
                owner, claimed = target.get(entry.kid).principal.source, entry.principal.source
                detail = f"kid {entry.kid} belongs to {owner}, the document says {claimed}"
                raise KeyringError(detail, reason="keyring-owner-conflict")
        for entry in document.keys:
            key = entry.trusted()
            if entry.kid in target and target.get(entry.kid).revoked and not key.revoked:
                log.warning("kid %s stays revoked: it was revoked locally", entry.kid)
                continue
            target.add(key)
        listed = frozenset(entry.kid for entry in document.keys)
        for kid in self._kids - listed:
            if kid in target:
                target.revoke(kid)  # dropped from a later version: trusted no more
        self._document, self._kids = document, listed

    async def _refuse(self, revision: int, exc: KeyringError) -> None:
        refusal = KeyringRefusal(revision, exc.reason, str(exc), exc.error or exc)
        log.warning("keyring value %d refused: %s", revision, exc)
        await _notify(self._on_refused, refusal)


def read_key_entry(spec: str) -> KeyEntry:
    """A public :class:`KeyEntry` from a JSON file, or inline JSON if ``spec`` starts with ``{``."""
    try:
        text = spec.encode() if spec.lstrip().startswith("{") else _read_bounded(spec, 64 * 1024)
        return KeyEntry.from_json(strict_loads(text, max_depth=2))
    except (ValueError, SecurityError) as exc:
        raise KeyringError(f"{spec[:80]}: {exc}", reason="keyring-invalid-entry") from None


def write_key_entry(path: str, key: Identity | TrustedKey | KeyEntry) -> KeyEntry:
    """Write the public entry of ``key`` (never its private half) to a new JSON file
    ``path`` (mode 0644, never overwritten), as ``eventwire keys export-public`` prints it;
    :func:`read_key_entry` and :func:`keyring_of_entries` read it back."""
    if isinstance(key, Identity):
        key = key.trusted()
    entry = key if isinstance(key, KeyEntry) else KeyEntry.from_trusted(key)
    text = json.dumps(entry.to_json(), indent=2) + "\n"
    try:
        write_atomic(path, text.encode(), mode=0o644, exclusive=True)
    except FileExistsError as exc:
        raise KeyringError(f"{path} exists", reason="keyring-exists") from exc
    except OSError as exc:
        raise KeyringError(f"cannot write {path}: {exc.strerror}", reason="keyring-file") from exc
    return entry


def keyring_of_entries(specs: Iterable[str]) -> Keyring:
    """A keyring of the public entries in ``specs`` (e.g. the admins' exported keys)."""
    try:
        return Keyring(read_key_entry(spec).trusted() for spec in specs)
    except SecurityError as exc:
        raise KeyringError(str(exc), reason="keyring-invalid-entry") from None


def read_keyring_file(path: str, admins: Keyring) -> tuple[KeyringDocument, bytes]:
    """The document in file ``path`` verified against ``admins``, and the file's bytes."""
    raw = _read_bounded(path, DEFAULT_MAX_BYTES)
    try:
        return KeyringDocument.verify(raw.strip(), admins, min_version=0), raw
    except SecurityError as exc:
        raise _refused(exc, f"{path}: ") from None


def read_keyring_token(path: str) -> bytes:
    """The signed document in file ``path``, unverified (receivers verify it)."""
    return _read_bounded(path, DEFAULT_MAX_BYTES).strip()


def write_keyring_file(path: str, token: bytes, *, replacing: bytes | None = None) -> None:
    """Write ``token`` to ``path`` atomically (mode 0644: a keyring document is public).

    Without ``replacing`` the file must not exist (it is never overwritten); with it, the
    file is replaced only if it still holds exactly ``replacing`` (the bytes read earlier).
    """
    if replacing is not None and _read_bounded(path, DEFAULT_MAX_BYTES) != replacing:
        raise KeyringError(f"{path} changed since it was read", reason="keyring-changed")
    try:
        write_atomic(path, token + b"\n", mode=0o644, exclusive=replacing is None)
    except FileExistsError as exc:
        detail = f"{path} exists: write a new file, or replace it in place"
        raise KeyringError(detail, reason="keyring-exists") from exc
    except OSError as exc:
        raise KeyringError(f"cannot write {path}: {exc.strerror}", reason="keyring-file") from exc


def _read_bounded(path: str, limit: int) -> bytes:
    try:
        with open(path, "rb") as file:
            data = file.read(limit + 1)
    except OSError as exc:
        raise KeyringError(f"cannot read {path}: {exc.strerror}", reason="keyring-file") from None
    if len(data) > limit:
        raise KeyringError(f"{path} is larger than {limit} bytes", reason="keyring-file")
    return data
