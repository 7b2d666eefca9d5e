"""``eventwire keys``: signing key files, and the signed keyring document.

Key files are encrypted PKCS#8 (mode 0600, never overwritten); the passphrase comes from
``EVENTWIRE_KEY_PASSPHRASE`` or a prompt, and a new file's has at least
``MIN_PASSPHRASE_BYTES`` (8) bytes. Keyring documents are files holding the signed
JWS. Every change signs a new version, written either to a new file (``--out``, which must
not exist) or atomically over the file it was read from (``--in-place``): one of the two
is required, so a document is never replaced by accident.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from eventwire import (
    keyring_bucket,
    keyring_of_entries,
    publish_keyring,
    read_key_entry,
    read_keyring_file,
    read_keyring_token,
    write_keyring_file,
)
from eventwire_security import (
    MIN_PASSPHRASE_BYTES,
    Identity,
    KeyEntry,
    KeyFileExists,
    KeyringDocument,
    PassphraseTooShort,
    passphrase_from_env,
    read_identity,
    write_identity,
)

from ._boundary import command_group, fail
from ._connect import jetstream
from ._output import Json, print_json, stdout

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

PASSPHRASE_ENV = "EVENTWIRE_KEY_PASSPHRASE"
PASSPHRASE_HELP = (
    f"The key file's passphrase is read from {PASSPHRASE_ENV}, or asked for when it is unset."
)
app = command_group(f"Signing key files and the signed keyring. {PASSPHRASE_HELP}")
keyring_app = command_group("Edit, list and publish the signed keyring.")
app.add_typer(keyring_app, name="keyring")

KeyPath = Annotated[str, typer.Argument(help="Key file.")]
Doc = Annotated[str, typer.Argument(help="Signed keyring document file.")]
Admin = Annotated[
    str,
    typer.Option(
        help=f"The admin's key file: signs the new version (passphrase: {PASSPHRASE_ENV} "
        "or a prompt)."
    ),
]
Admins = Annotated[
    list[str] | None,
    typer.Option(help="Public key entry (JSON file) of an admin trusted to sign DOC; repeat."),
]
RequiredAdmins = Annotated[
    list[str],
    typer.Option(
        "--admins",
        help="Public key entry (JSON file) of an admin trusted to sign DOC; repeat. Required: "
        "DOC is listed only if one of them signed it.",
    ),
]
Out = Annotated[str | None, typer.Option(help="Write the new version to this new file.")]
InPlace = Annotated[bool, typer.Option("--in-place", help="Replace DOC atomically.")]


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Values out of range (a grace period too long for a date) are input errors too; the
    typed errors go on to the CLI boundary."""
    try:
        yield
    except (ValueError, OverflowError) as exc:
        fail(exc)


def _passphrase() -> bytes:
    """From ``EVENTWIRE_KEY_PASSPHRASE``, or asked for (not echoed)."""
    if os.environ.get(PASSPHRASE_ENV):
        return passphrase_from_env(PASSPHRASE_ENV)
    value: str = typer.prompt("Passphrase", hide_input=True)
    return os.fsencode(value)


def _new_passphrase() -> bytes:
    """A new key file's passphrase: too short is refused before it is asked for again."""
    passphrase = _passphrase()
    if len(passphrase) < MIN_PASSPHRASE_BYTES:
        raise PassphraseTooShort(len(passphrase))
    if not os.environ.get(PASSPHRASE_ENV):
        again: str = typer.prompt("Repeat for confirmation", hide_input=True)
        if os.fsencode(again) != passphrase:
            fail("the two passphrases differ: nothing written")
    return passphrase


def _public(identity: Identity) -> KeyEntry:
    return KeyEntry.from_trusted(identity.trusted())


@app.command()
def generate(
    tenant: Annotated[str, typer.Option(help="Tenant that owns the key.")],
    agent: Annotated[str, typer.Option(help="Agent that owns the key.")],
    out: Annotated[str, typer.Option(help="New key file (mode 0600; never overwritten).")],
) -> None:
    """Generate an Ed25519 signing key and write it encrypted to a new file.

    The passphrase (at least 8 bytes) is read from EVENTWIRE_KEY_PASSPHRASE, or asked for twice.
    Keep the file: receivers trust this key, not the one a restarted agent would generate."""
    with _errors():
        identity = Identity.generate(tenant, agent)
        if os.path.lexists(out):
            raise KeyFileExists("refusing to overwrite an existing key file", path=out)
        write_identity(out, identity, _new_passphrase())
    stdout().print(f"wrote key {identity.kid} of {identity.principal.source} to {escape(out)}")


@app.command()
def show(path: KeyPath) -> None:
    """Show a key file's kid, owner and public key (passphrase: EVENTWIRE_KEY_PASSPHRASE or
    a prompt)."""
    with _errors():
        identity = read_identity(path, _passphrase())
    for name, value in (
        ("kid", identity.kid), ("tenant", identity.principal.tenant),
        ("agent", identity.principal.agent),
        ("public key", base64.urlsafe_b64encode(identity.public_key.raw).rstrip(b"=").decode()),
    ):  # fmt: skip
        stdout().print(f"[bold]{name:>10}[/bold]  {value}")


@app.command("export-public")
def export_public(path: KeyPath) -> None:
    """Print the key's public keyring entry (JSON), to add to a keyring document
    (passphrase: EVENTWIRE_KEY_PASSPHRASE or a prompt)."""
    with _errors():
        identity = read_identity(path, _passphrase())
    typer.echo(json.dumps(_public(identity).to_json(), indent=2))


@keyring_app.command("init")
def keyring_init(
    admin: Admin,
    out: Annotated[str, typer.Option(help="New document file.")],
    entry: Annotated[
        list[str] | None, typer.Option(help="Public key entry to list; repeat.")
    ] = None,
) -> None:
    """Sign version 1 of a keyring document."""
    with _errors():
        document = KeyringDocument.create(read_key_entry(spec) for spec in entry or ())
        write_keyring_file(out, document.sign(_read_admin(admin)))
    _written(document, out)


def _read_admin(path: str) -> Identity:
    return read_identity(path, _passphrase())


def _written(document: KeyringDocument, path: str) -> None:
    count = len(document.keys)
    stdout().print(f"keyring version {document.version} ({count} keys) written to {escape(path)}")


def _edit(
    doc: str,
    *,
    admin: str,
    admins: list[str] | None,
    out: str | None,
    in_place: bool,
    change: Callable[[KeyringDocument], KeyringDocument],
) -> None:
    """Read DOC (verified), apply ``change``, sign the next version, write it."""
    if (out is None) != in_place:
        fail("give --out NEW_FILE, or --in-place", code=2)
    with _errors():
        identity = _read_admin(admin)
        trusted = keyring_of_entries(admins or ())
        if identity.kid not in trusted:
            trusted.add(identity.trusted())
        document, raw = read_keyring_file(doc, trusted)
        changed = change(document)
        target = doc if out is None else out
        write_keyring_file(target, changed.sign(identity), replacing=raw if in_place else None)
    _written(changed, target)


@keyring_app.command("add")
def keyring_add(
    doc: Doc,
    *,
    admin: Admin,
    entry: Annotated[str, typer.Option(help="Public key entry (JSON file) to add.")],
    out: Out = None,
    in_place: InPlace = False,
    admins: Admins = None,
) -> None:
    """Add a new agent's key."""
    _edit(
        doc,
        admin=admin,
        admins=admins,
        out=out,
        in_place=in_place,
        change=lambda d: d.add(read_key_entry(entry)),
    )


@keyring_app.command("rotate")
def keyring_rotate(
    doc: Doc,
    *,
    admin: Admin,
    old: Annotated[str, typer.Option(help="Kid of the key to phase out.")],
    new: Annotated[str, typer.Option(help="Public key entry (JSON file) of its successor.")],
    grace: Annotated[float, typer.Option(help="Seconds the old key keeps verifying.")],
    out: Out = None,
    in_place: InPlace = False,
    admins: Admins = None,
) -> None:
    """Replace a key: the new one is active, the old one verifies for GRACE more seconds."""

    def change(document: KeyringDocument) -> KeyringDocument:
        until = datetime.now(UTC) + timedelta(seconds=grace)
        return document.rotate(old, read_key_entry(new), until)

    _edit(doc, admin=admin, admins=admins, out=out, in_place=in_place, change=change)


@keyring_app.command("revoke")
def keyring_revoke(
    doc: Doc,
    *,
    admin: Admin,
    kid: Annotated[str, typer.Option(help="Kid of the key to revoke.")],
    out: Out = None,
    in_place: InPlace = False,
    admins: Admins = None,
) -> None:
    """Revoke a key: receivers refuse it as soon as they load the new version."""
    _edit(
        doc, admin=admin, admins=admins, out=out, in_place=in_place, change=lambda d: d.revoke(kid)
    )


@keyring_app.command("list")
def keyring_list(doc: Doc, admins: RequiredAdmins, json_: Json = False) -> None:
    """Verify DOC against the admins' public keys and list its keys."""
    document, _ = read_keyring_file(doc, keyring_of_entries(admins))
    issued = document.issued_at.isoformat(timespec="seconds")
    now = datetime.now(UTC)
    keys = [_key_json(entry, now) for entry in document.keys]
    if json_:
        print_json({"version": document.version, "issued_at": issued, "keys": keys})
        return
    table = Table(title=f"keyring version {document.version}, issued {issued}")
    for column in ("kid", "tenant", "agent", "status", "not_after"):
        table.add_column(column)
    for key in keys:
        table.add_row(*(escape(str(key[column] or "")) for column in key))
    stdout().print(table)


def _key_json(entry: KeyEntry, now: datetime) -> dict[str, str | None]:
    expired = entry.not_after is not None and entry.not_after < now
    until = entry.not_after
    return {
        "kid": entry.kid,
        "tenant": entry.tenant,
        "agent": entry.agent,
        "status": "expired" if expired and entry.status == "active" else entry.status,
        "not_after": None if until is None else until.isoformat(timespec="seconds"),
    }


@keyring_app.command("push")
def keyring_push(
    doc: Doc,
    url: Annotated[str, typer.Option(envvar="EVENTWIRE_URL", help="NATS server URL.")],
    root: Annotated[str, typer.Option(help="Subject root of the deployment.")] = "ew",
    admins: Admins = None,
) -> None:
    """Publish DOC as the current keyring (KV bucket <root>-keyring).

    With --admins it must verify and be newer than the current one (receivers check that
    anyway; this catches a mistake before it is published).
    """
    with _errors():
        token = read_keyring_token(doc)
        trusted = keyring_of_entries(admins) if admins else None

    async def main() -> None:
        async with jetstream(url) as js:
            revision = await publish_keyring(js, root, token, admins=trusted)
        stdout().print(f"pushed {escape(doc)} to {keyring_bucket(root)} (revision {revision})")

    asyncio.run(main())
