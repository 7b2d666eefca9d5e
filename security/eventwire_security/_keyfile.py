"""Private key files: encrypted PKCS#8 inside a small JSON document, mode 0600 (POSIX only).

File format (one file, written once)::

    {"format": "eventwire-key/1", "tenant": "...", "agent": "...", "kid": "...",
     "pkcs8_pem": "-----BEGIN ENCRYPTED PRIVATE KEY-----\\n..."}

One file rather than a PEM plus a sidecar: the principal and the key cannot drift apart or
be copied separately, and it is written atomically and exclusively (``_files``: never over
an existing file, never half-written). Encrypted PKCS#8 PEM has no room for headers, hence
the JSON wrapper. ``tenant``/``agent``/``kid`` are in clear (they are public); ``kid`` is
checked against the decrypted key on read. The principal is not authenticated by the file:
receivers bind kid to owner through their keyring.

Encryption is ``cryptography``'s ``BestAvailableEncryption``: PBES2 with PBKDF2-HMAC-SHA256
and AES-256-CBC. PBKDF2 runs only 2048 rounds there, so use a long random passphrase.
A wrong passphrase and a damaged ciphertext are indistinguishable (no MAC over CBC): both
are :class:`KeyFileLocked`; a damaged structure is :class:`KeyFileInvalid`.

Path safety: the final component is never followed if it is a symlink (O_NOFOLLOW), the
immediate parent directory is opened with O_NOFOLLOW too and must not be writable by group
or others (unless sticky, like /tmp), and both are owned by the current user or root. The
file is then opened relative to that directory's descriptor, so the checked directory is
the one used. Ancestors above the parent are resolved normally.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import os
import stat
from typing import TYPE_CHECKING, Any

from ._errors import InvalidName, KeyRejected, SecurityError
from ._files import write_atomic
from ._json import strict_loads
from ._keys import Identity, Principal

if TYPE_CHECKING:
    from collections.abc import Iterator

FORMAT = "eventwire-key/1"
PASSPHRASE_ENV = "EVENTWIRE_KEY_PASSPHRASE"
MAX_PASSPHRASE_BYTES = 1023  # the limit of cryptography's PKCS#8 encryption
MIN_PASSPHRASE_BYTES = 8  # for new key files; existing ones open with any passphrase
MAX_FILE_BYTES = 64 * 1024
_FIELDS = frozenset({"format", "tenant", "agent", "kid", "pkcs8_pem"})
_PEM_BEGIN = "-----BEGIN ENCRYPTED PRIVATE KEY-----\n"
_SYMLINK_ERRNOS = frozenset({errno.ELOOP, errno.EMLINK})


class KeyFileError(SecurityError):
    """A key file cannot be written or read. ``reason`` is a short, stable machine code."""

    reason: str = "key-file"

    def __init__(self, detail: str, *, path: str | None = None) -> None:
        super().__init__(f"{self.reason}: {detail}" + (f" ({path})" if path else ""))
        self.detail = detail
        self.path = path


class KeyFileExists(KeyFileError):
    """The key file already exists; it is never overwritten."""

    reason = "key-file-exists"


class KeyFileMissing(KeyFileError):
    """There is no key file at the path."""

    reason = "key-file-missing"


class KeyFileUnsafe(KeyFileError):
    """A symlink, a non-regular file, loose permissions (``mode``) or a foreign owner."""

    reason = "key-file-unsafe"

    def __init__(self, detail: str, *, path: str | None = None, mode: int | None = None) -> None:
        super().__init__(detail + (f", mode {mode:04o}" if mode is not None else ""), path=path)
        self.mode = mode


class KeyFileLocked(KeyFileError):
    """The passphrase does not decrypt the key (or the ciphertext was damaged)."""

    reason = "key-file-locked"


class KeyFileInvalid(KeyFileError):
    """The file is not a well-formed eventwire key file for an Ed25519 key."""

    reason = "key-file-invalid"


class PassphraseRequired(KeyFileError):
    """No usable passphrase: empty, too long, or the environment variable is unset."""

    reason = "passphrase-required"


class PassphraseTooShort(PassphraseRequired):
    """A new key file's passphrase is shorter than ``minimum`` bytes (existing files still
    open with theirs)."""

    reason = "passphrase-too-short"

    def __init__(self, length: int, *, path: str | None = None) -> None:
        super().__init__(
            f"a new key file needs a passphrase of at least {MIN_PASSPHRASE_BYTES} bytes, "
            f"got {length}",
            path=path,
        )
        self.minimum = MIN_PASSPHRASE_BYTES
        self.length = length


def passphrase_from_env(var: str = PASSPHRASE_ENV) -> bytes:
    """The passphrase in environment variable ``var``, as bytes; typed error if unset/empty."""
    value = os.environ.get(var)
    if not value:
        raise PassphraseRequired(f"environment variable {var} is unset or empty")
    return _check_passphrase(os.fsencode(value))


def _check_passphrase(passphrase: bytes) -> bytes:
    if not isinstance(passphrase, bytes):
        raise TypeError(f"passphrase must be bytes, got {type(passphrase).__name__}")
    if not passphrase:
        raise PassphraseRequired("the passphrase is empty")
    if len(passphrase) > MAX_PASSPHRASE_BYTES:
        raise PassphraseRequired(f"the passphrase is longer than {MAX_PASSPHRASE_BYTES} bytes")
    return passphrase


def write_identity(path: str | os.PathLike[str], identity: Identity, passphrase: bytes) -> None:
    """Write ``identity`` to a new file at ``path`` (mode 0600); never overwrite one.

    The passphrase needs at least :data:`MIN_PASSPHRASE_BYTES` bytes
    (:class:`PassphraseTooShort`); :func:`read_identity` opens older files with shorter ones.
    """
    if not isinstance(identity, Identity):
        raise TypeError(f"expected Identity, got {type(identity).__name__}")
    path = os.fspath(path)
    if len(_check_passphrase(passphrase)) < MIN_PASSPHRASE_BYTES:
        raise PassphraseTooShort(len(passphrase), path=path)
    data = _encode(identity, passphrase)
    with _parent_dir(path) as (dir_fd, name):
        try:
            write_atomic(name, data, mode=0o600, exclusive=True, dir_fd=dir_fd)
        except FileExistsError as exc:
            # The link never follows a symlink: it fails with EEXIST, even if dangling.
            if stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode):
                raise KeyFileUnsafe("the key path is a symlink", path=path) from exc
            raise KeyFileExists("refusing to overwrite an existing key file", path=path) from exc


def read_identity(path: str | os.PathLike[str], passphrase: bytes) -> Identity:
    """Read and decrypt the identity at ``path``, refusing unsafe or malformed files."""
    _check_passphrase(passphrase)
    path = os.fspath(path)
    with _parent_dir(path) as (dir_fd, name):
        try:
            # O_NONBLOCK: a FIFO planted at the path must not hang us (ignored for files).
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
            fd = os.open(name, flags, dir_fd=dir_fd)
        except FileNotFoundError:
            raise KeyFileMissing("no such key file", path=path) from None
        except OSError as exc:
            if exc.errno in _SYMLINK_ERRNOS:
                raise KeyFileUnsafe("the key path is a symlink", path=path) from None
            raise
        try:
            _check_owned(os.fstat(fd), path, is_dir=False)
            data = _read_bounded(fd)
        finally:
            os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        raise KeyFileInvalid(f"larger than {MAX_FILE_BYTES} bytes", path=path)
    return _decode(data, passphrase, path)


def _read_bounded(fd: int) -> bytes:
    """Up to ``MAX_FILE_BYTES + 1`` bytes: enough to tell that a file is too large."""
    chunks: list[bytes] = []
    size = 0
    while size <= MAX_FILE_BYTES and (chunk := os.read(fd, MAX_FILE_BYTES + 1 - size)):
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


@contextlib.contextmanager
def _parent_dir(path: str) -> Iterator[tuple[int, str]]:
    """Open and check the parent directory of ``path``; yield its descriptor and the name."""
    parent, name = os.path.split(path)
    if name in ("", ".", ".."):
        raise KeyFileInvalid("the path does not name a file", path=path)
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        dir_fd = os.open(parent or ".", flags)
    except FileNotFoundError:
        raise KeyFileMissing("the key file's directory does not exist", path=path) from None
    except OSError as exc:
        if exc.errno in _SYMLINK_ERRNOS or exc.errno == errno.ENOTDIR:
            raise KeyFileUnsafe("the parent is a symlink or not a directory", path=path) from None
        raise
    try:
        _check_owned(os.fstat(dir_fd), path, is_dir=True)
        yield dir_fd, name
    finally:
        os.close(dir_fd)


def _check_owned(st: os.stat_result, path: str, *, is_dir: bool) -> None:
    what = "the parent directory" if is_dir else "the key file"
    if st.st_uid not in (os.geteuid(), 0):
        raise KeyFileUnsafe(f"{what} is owned by uid {st.st_uid}", path=path)
    mode = stat.S_IMODE(st.st_mode)
    if is_dir:
        if mode & 0o022 and not mode & stat.S_ISVTX:
            raise KeyFileUnsafe(f"{what} is writable by others", path=path, mode=mode)
        return
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileUnsafe(f"{what} is not a regular file", path=path)
    if mode & 0o077:
        raise KeyFileUnsafe(f"{what} is accessible to group or others", path=path, mode=mode)


def _encode(identity: Identity, passphrase: bytes) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.from_private_bytes(identity.seed)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    )
    document = {
        "format": FORMAT,
        "tenant": identity.principal.tenant,
        "agent": identity.principal.agent,
        "kid": identity.kid,
        "pkcs8_pem": pem.decode("ascii"),
    }
    return (json.dumps(document, indent=2) + "\n").encode("utf-8")


def _parse(data: bytes, path: str) -> dict[str, str]:
    try:
        document: Any = strict_loads(data, max_depth=1)
    except ValueError as exc:
        raise KeyFileInvalid(f"not strict JSON: {exc}", path=path) from None
    if not isinstance(document, dict) or set(document) != _FIELDS:
        raise KeyFileInvalid(f"expected exactly the fields {sorted(_FIELDS)}", path=path)
    if not all(isinstance(value, str) for value in document.values()):
        raise KeyFileInvalid("every field must be a string", path=path)
    if document["format"] != FORMAT:
        raise KeyFileInvalid(f"format must be {FORMAT!r}", path=path)
    if not document["pkcs8_pem"].startswith(_PEM_BEGIN):
        raise KeyFileInvalid("pkcs8_pem must be an encrypted PKCS#8 PEM", path=path)
    return document


def _der_item(der: bytes, at: int) -> tuple[int, int, int]:
    """The tag, start and end of the DER item at ``at`` (ValueError if it does not fit)."""
    tag, first = der[at], der[at + 1]
    start = at + 2
    if first & 0x80:
        size = first & 0x7F
        if not 1 <= size <= 4:
            raise ValueError("bad DER length")
        length, start = int.from_bytes(der[start : start + size], "big"), start + size
    else:
        length = first
    if start + length > len(der):
        raise ValueError("DER item longer than its input")
    return tag, start, start + length


def _encrypted_info(document: dict[str, str]) -> bool:
    """Whether the PEM is a well-formed EncryptedPrivateKeyInfo: SEQUENCE { SEQUENCE
    (the algorithm), OCTET STRING (the ciphertext) }, with nothing after."""
    body = "".join(document["pkcs8_pem"].strip().splitlines()[1:-1])
    try:
        der = base64.b64decode(body, validate=True)
        tag, start, end = _der_item(der, 0)
        algorithm, _, after = _der_item(der, start)
        octets, _, last = _der_item(der, after)
    except (ValueError, IndexError):
        return False
    return (tag, algorithm, octets, end, last) == (0x30, 0x30, 0x04, len(der), end)


def _decode(data: bytes, passphrase: bytes, path: str) -> Identity:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    document = _parse(data, path)
    try:
        principal = Principal(document["tenant"], document["agent"])
        key = serialization.load_pem_private_key(
            document["pkcs8_pem"].encode("ascii"), password=passphrase
        )
    except InvalidName as exc:
        raise KeyFileInvalid(str(exc), path=path) from None
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        # cryptography says "Incorrect password, could not decrypt key" (older: "Bad
        # decrypt. Incorrect password?"); every other failure is a malformed file.
        # A wrong passphrase decrypts to noise whose padding is valid about once in 256
        # tries; then the inner parse fails instead. A well-formed outer structure means
        # the ciphertext (or the passphrase) is what is wrong, as in the common case.
        wrong = "incorrect password" in str(exc).lower() or _encrypted_info(document)
        if isinstance(exc, ValueError) and wrong:
            raise KeyFileLocked("wrong passphrase (or damaged ciphertext)", path=path) from None
        raise KeyFileInvalid(f"not a readable PKCS#8 key: {exc}", path=path) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileInvalid(f"not an Ed25519 key: {type(key).__name__}", path=path)
    try:
        identity = Identity(principal, key.private_bytes_raw())
    except KeyRejected as exc:
        raise KeyFileInvalid(str(exc), path=path) from None
    if identity.kid != document["kid"]:
        detail = f"kid {document['kid']!r} is not the key's kid {identity.kid!r}"
        raise KeyFileInvalid(detail, path=path)
    return identity
