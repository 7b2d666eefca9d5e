"""Keys and the signed keyring on a real server: the KV-distributed document applied live by
a KeyringWatcher, and the ``keys`` / ``keys keyring`` commands run as a user would."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import nats
import pytest

from eventwire import (
    CustomEvent,
    Event,
    Identity,
    Keyring,
    KeyringError,
    KeyringRefusal,
    KeyringWatcher,
    keyring_bucket,
    publish_keyring,
    read_key_entry,
    write_keyring_file,
)
from eventwire_security import (
    KeyEntry,
    KeyNotValid,
    KeyringDocument,
    UnknownKey,
    read_identity,
    sign_claims,
    verify_envelope,
)
from tests.conftest import TENANT, wait_until

# The keyring bucket's one key, as the SDK documents it (``eventwire._keyring_store``).
CURRENT = "current"

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from nats.aio.client import Client as NatsClient
    from nats.js import JetStreamContext

    from eventwire import Bus, EmbeddedServer

NOW = datetime.now(UTC)
PASSPHRASE = "correct horse battery staple"


@pytest.fixture
async def nc(nats_server: EmbeddedServer) -> AsyncIterator[NatsClient]:
    client = await nats.connect(nats_server.url)
    yield client
    await client.close()


@pytest.fixture
def js(nc: NatsClient) -> JetStreamContext:
    return nc.jetstream()


@pytest.fixture
def admin() -> Identity:
    return Identity.generate(TENANT, "admin")


@pytest.fixture
def admins(admin: Identity) -> Keyring:
    return Keyring.of(admin)


def entry(identity: Identity) -> KeyEntry:
    return KeyEntry.from_trusted(identity.trusted())


def token_by(identity: Identity) -> bytes:
    principal = identity.principal
    return sign_claims({"source": principal.source, "tenant": principal.tenant}, identity)


class Recorder:
    """Collects what a watcher reports (async callbacks, as the SDK's audit will be)."""

    def __init__(self) -> None:
        self.refused: list[KeyringRefusal] = []
        self.applied: list[int] = []

    async def on_refused(self, refusal: KeyringRefusal) -> None:
        await asyncio.sleep(0)
        self.refused.append(refusal)

    def on_applied(self, document: KeyringDocument) -> None:
        self.applied.append(document.version)

    def watcher(
        self, js: JetStreamContext, root: str, admins: Keyring, target: Keyring, **kw: Any
    ) -> KeyringWatcher:
        return KeyringWatcher(
            js, root, admins, target, on_refused=self.on_refused, on_applied=self.on_applied, **kw
        )


async def test_versions_apply_live_and_a_rollback_is_refused(
    js: JetStreamContext, bus: Bus, root: str, admin: Identity, admins: Keyring
) -> None:
    alice, bob = Identity.generate(TENANT, "alice"), Identity.generate(TENANT, "bob")
    v1 = KeyringDocument.create([entry(alice)])
    await publish_keyring(js, root, v1.sign(admin), admins=admins)
    seen: list[Event] = []

    async def handle(event: Event) -> None:
        seen.append(event)

    report = Recorder()
    async with report.watcher(js, root, admins, bus.keyring) as watcher:
        assert (watcher.version, report.applied) == (1, [1])
        assert verify_envelope(token_by(alice), bus.keyring).signer.kid == alice.kid
        with pytest.raises(UnknownKey):
            verify_envelope(token_by(bob), bus.keyring)

        v2 = v1.add(entry(bob))
        await publish_keyring(js, root, v2.sign(admin), admins=admins)
        await wait_until(lambda: watcher.version == 2)
        async with bus.subscribe("custom.keys", handle, durable="keys"):
            await bus.publish(CustomEvent("custom.keys", "t", {"by": "bob"}), identity=bob)
            await wait_until(lambda: len(seen) == 1)
        assert seen[0].signer_kid == bob.kid

        v3 = v2.revoke(alice.kid)
        await publish_keyring(js, root, v3.sign(admin), admins=admins)
        await wait_until(lambda: watcher.version == 3)
        with pytest.raises(KeyNotValid, match="revoked"):
            verify_envelope(token_by(alice), bus.keyring)

        with pytest.raises(KeyringError, match="keyring-rollback"):
            await publish_keyring(js, root, v1.sign(admin), admins=admins)
        await publish_keyring(js, root, v1.sign(admin))  # unchecked put: as an attacker could
        await wait_until(lambda: len(report.refused) == 1)
        assert report.refused[0].reason == "keyring-rollback"
        assert watcher.version == 3
        with pytest.raises(KeyNotValid, match="revoked"):
            verify_envelope(token_by(alice), bus.keyring)
    assert report.applied == [1, 2, 3]


async def test_a_fresh_watcher_replays_the_history(
    js: JetStreamContext, root: str, admin: Identity, admins: Keyring
) -> None:
    alice, bob = Identity.generate(TENANT, "alice"), Identity.generate(TENANT, "bob")
    v1 = KeyringDocument.create([entry(alice)])
    v2 = v1.add(entry(bob)).revoke(alice.kid)  # version 3
    for token in (v1.sign(admin), v2.sign(admin), v1.sign(admin)):
        await publish_keyring(js, root, token)
    report, target = Recorder(), Keyring()
    async with report.watcher(js, root, admins, target) as watcher:
        assert (watcher.version, report.applied) == (3, [3])
        assert [r.reason for r in report.refused] == ["keyring-rollback"]
        assert target.get(alice.kid).revoked
        assert not target.get(bob.kid).revoked

    v4 = v2.add(entry(Identity.generate(TENANT, "carol")))
    await publish_keyring(js, root, v4.sign(admin))
    report = Recorder()
    async with report.watcher(js, root, admins, Keyring()) as watcher:
        assert (watcher.version, report.applied, report.refused) == (4, [4], [])  # superseded


async def test_forged_conflicting_and_deleted_values_are_refused(
    js: JetStreamContext, root: str, admin: Identity, admins: Keyring
) -> None:
    alice, mallory = Identity.generate(TENANT, "alice"), Identity.generate(TENANT, "mallory")
    v1 = KeyringDocument.create([entry(alice)])
    await publish_keyring(js, root, v1.sign(admin))
    report, target = Recorder(), Keyring()
    async with report.watcher(js, root, admins, target) as watcher:
        forged = v1.add(entry(mallory)).sign(mallory)  # signed by a non-admin
        other = KeyringDocument.create([entry(mallory)]).sign(admin)  # version 1 again
        kv = await js.key_value(keyring_bucket(root))
        for value in (forged, other, b"garbage"):
            await kv.put(CURRENT, value)
        await kv.delete(CURRENT)
        await wait_until(lambda: len(report.refused) == 4)
        reasons = [r.reason for r in report.refused]
        assert reasons == ["unknown-key", "keyring-conflict", "malformed", "keyring-deleted"]
        assert watcher.version == 1
        assert [key.kid for key in target] == [alice.kid]


async def test_a_kid_never_changes_owner_and_dropped_keys_are_revoked(
    js: JetStreamContext, root: str, admin: Identity, admins: Keyring
) -> None:
    alice, bob = Identity.generate(TENANT, "alice"), Identity.generate(TENANT, "bob")
    target = Keyring.of(alice)
    stolen = KeyEntry(TENANT, "eve", alice.public_key.raw, alice.kid)
    await publish_keyring(js, root, KeyringDocument.create([stolen, entry(bob)]).sign(admin))
    report = Recorder()
    async with report.watcher(js, root, admins, target) as watcher:
        assert [r.reason for r in report.refused] == ["keyring-owner-conflict"]
        assert (watcher.version, len(target)) == (0, 1)  # nothing of it was applied

        v2 = KeyringDocument(2, NOW, (entry(bob),))
        await publish_keyring(js, root, v2.sign(admin))
        await wait_until(lambda: watcher.version == 2)
        v3 = KeyringDocument(3, NOW, ())  # bob dropped: no longer trusted
        await publish_keyring(js, root, v3.sign(admin))
        await wait_until(lambda: watcher.version == 3)
        assert target.get(bob.kid).revoked
        assert not target.get(alice.kid).revoked  # the application's own key is left alone
    v4 = KeyringDocument(4, NOW, (entry(bob),))
    await publish_keyring(js, root, v4.sign(admin))
    await asyncio.sleep(0.2)
    assert watcher.version == 3  # stopped with its block: nothing applied any more


async def test_a_held_document_refuses_older_history(
    js: JetStreamContext, root: str, admin: Identity, admins: Keyring
) -> None:
    alice = Identity.generate(TENANT, "alice")
    v1 = KeyringDocument.create([entry(alice)])
    held = v1.revoke(alice.kid)
    await publish_keyring(js, root, v1.sign(admin))  # the bucket lost version 2
    report, target = Recorder(), held.to_keyring()
    async with report.watcher(js, root, admins, target, held=held) as watcher:
        assert [r.reason for r in report.refused] == ["keyring-rollback"]
        assert watcher.version == 2
        assert target.get(alice.kid).revoked


# The sub-apps mounted as the eventwire command mounts them (``eventwire keys``/``audit``).
CLI = """
import typer
from eventwire.cli._audit import app as audit
from eventwire.cli._keys import app as keys
cli = typer.Typer()
cli.add_typer(keys, name="keys")
cli.add_typer(audit, name="audit")
cli(prog_name="eventwire")
"""


async def cli(
    *args: str, passphrase: str | None = PASSPHRASE, stdin: bytes = b"", columns: int = 200
) -> tuple[int, str]:
    env = {"COLUMNS": str(columns), "PATH": "/usr/bin:/bin"}
    if passphrase is not None:
        env["EVENTWIRE_KEY_PASSPHRASE"] = passphrase
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLI, *args, env=env, start_new_session=True,  # no tty: no getpass
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await proc.communicate(stdin)
    return proc.returncode or 0, out.decode()


async def ok(*args: str) -> str:
    code, out = await cli(*args)
    assert code == 0, out
    return out


async def fails(*args: str, code: int = 1, passphrase: str | None = PASSPHRASE) -> str:
    got, out = await cli(*args, passphrase=passphrase)
    assert got == code, out
    return out


async def test_keys_generate_show_export(tmp_path: Path) -> None:
    key = str(tmp_path / "alice.key")
    generate = ("keys", "generate", "--tenant", TENANT, "--agent", "alice", "--out", key)
    out = await ok(*generate)
    identity = read_identity(key, PASSPHRASE.encode())
    assert f"wrote key {identity.kid} of acme/alice" in out
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    before = (tmp_path / "alice.key").read_bytes()
    again, shown, locked, exported = await asyncio.gather(
        fails(*generate), ok("keys", "show", key),
        fails("keys", "show", key, passphrase="wrong"), ok("keys", "export-public", key),
    )  # fmt: skip
    assert "refusing to overwrite" in again
    assert (tmp_path / "alice.key").read_bytes() == before
    assert [identity.kid, "acme", "alice"] == [line.split()[-1] for line in shown.splitlines()[:3]]
    assert "key-file-locked" in locked
    assert KeyEntry.from_json(json.loads(exported)) == entry(identity)
    os.chmod(key, 0o644)
    assert "key-file-unsafe" in await fails("keys", "show", key)


async def test_keys_generate_prompts_for_a_confirmed_passphrase(tmp_path: Path) -> None:
    key = str(tmp_path / "bob.key")
    args = ("keys", "generate", "--tenant", TENANT, "--agent", "bob", "--out", key)
    code, out = await cli(*args, passphrase=None, stdin=b"typed secret\ntyped secret\n")
    assert code == 0, out
    assert read_identity(key, b"typed secret").principal.agent == "bob"
    code, out = await cli(*args[:-1], key + "2", passphrase=None, stdin=b"one two 1\ntwo\n")
    assert (code, out.splitlines()[-1]) == (1, "error: the two passphrases differ: nothing written")
    assert not (tmp_path / "bob.key2").exists()


async def test_a_new_key_file_needs_a_passphrase_of_8_bytes(tmp_path: Path) -> None:
    key = str(tmp_path / "carol.key")
    args = ("keys", "generate", "--tenant", TENANT, "--agent", "carol", "--out", key)
    expected = "a new key file needs a passphrase of at least 8 bytes, got 7"
    from_env = await fails(*args, passphrase="1234567")
    assert from_env == f"error: passphrase-too-short: {expected}\n"
    code, typed = await cli(*args, passphrase=None, stdin=b"1234567\n")
    assert (code, typed.splitlines()[-1]) == (1, f"error: passphrase-too-short: {expected}")
    assert "Repeat" not in typed  # refused before it is asked for again
    assert not (tmp_path / "carol.key").exists()
    await ok(*args[:-1], key)  # 28 bytes: fine
    assert read_identity(key, PASSPHRASE.encode()).principal.agent == "carol"


async def test_help_names_the_environment_and_what_is_required() -> None:
    for command in (("generate",), ("show",), ("export-public",)):
        assert "EVENTWIRE_KEY_PASSPHRASE" in await ok("keys", *command, "--help")
    assert "EVENTWIRE_URL" in await ok("keys", "keyring", "push", "--help")
    listing = await ok("keys", "keyring", "list", "--help")
    assert "--admins" in listing
    assert "[required]" in listing


async def make_key(tmp_path: Path, agent: str, name: str | None = None) -> tuple[str, str]:
    """A key file and its exported public entry file."""
    key, public = tmp_path / f"{name or agent}.key", tmp_path / f"{name or agent}.json"
    await ok("keys", "generate", "--tenant", TENANT, "--agent", agent, "--out", str(key))
    public.write_text(await ok("keys", "export-public", str(key)))
    return str(key), str(public)


def kid_of(public: str) -> str:
    with open(public) as file:
        return str(json.load(file)["kid"])


def rows_of(table: str) -> dict[str, list[str]]:
    """The rows of a rich table by their first cell."""
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in table.splitlines()]
    return {row[0]: row for row in cells if len(row) > 1}


async def test_keyring_init_add_rotate_revoke_list(tmp_path: Path) -> None:
    (admin, admin_pub), (_, alice_pub), (_, bob_pub), (_, bob2_pub) = await asyncio.gather(
        make_key(tmp_path, "admin"), make_key(tmp_path, "alice"),
        make_key(tmp_path, "bob"), make_key(tmp_path, "bob", "bob2"),
    )  # fmt: skip
    v1, v2, v3 = (str(tmp_path / f"v{n}.jws") for n in (1, 2, 3))
    alice, bob, bob2 = kid_of(alice_pub), kid_of(bob_pub), kid_of(bob2_pub)
    out = await ok("keys", "keyring", "init", "--admin", admin, "--out", v1, "--entry", alice_pub)
    assert "keyring version 1 (1 keys)" in out
    add = ("keys", "keyring", "add", v1, "--admin", admin, "--entry", bob_pub, "--out", v2)
    assert "keyring version 2 (2 keys)" in await ok(*add)
    rotate = ("--old", bob, "--new", bob2_pub, "--grace", "3600", "--out", v3)
    no_target = ("keys", "keyring", "revoke", v2, "--admin", admin, "--kid", alice)
    exists, neither, rotated = await asyncio.gather(
        fails(*add), fails(*no_target, code=2),
        ok("keys", "keyring", "rotate", v2, "--admin", admin, *rotate),
    )  # fmt: skip
    assert "keyring-exists" in exists
    assert "give --out NEW_FILE, or --in-place" in neither
    assert "keyring version 3 (3 keys)" in rotated
    revoke = ("keys", "keyring", "revoke", v3, "--admin", admin, "--kid", alice, "--in-place")
    assert "keyring version 4 (3 keys)" in await ok(*revoke)

    listed, foreign = await asyncio.gather(
        ok("keys", "keyring", "list", v3, "--admins", admin_pub),
        fails("keys", "keyring", "list", v3, "--admins", alice_pub),
    )
    assert "keyring version 4" in listed
    rows = rows_of(listed)
    assert rows[alice][1:4] == ["acme", "alice", "revoked"]
    assert rows[bob][1:4] == rows[bob2][1:4] == ["acme", "bob", "active"]
    grace = datetime.fromisoformat(rows[bob][4]) - datetime.now(UTC)
    assert timedelta(minutes=55) < grace <= timedelta(hours=1)
    assert rows[bob2][4] == ""
    assert "unknown-key" in foreign
    await _list_as_json_and_piped(v3, admin_pub, {alice: "revoked", bob: "active", bob2: "active"})
    token = (tmp_path / "v3.jws").read_bytes()
    flipped = token[:-3] + (b"A" if token[-3:-2] != b"A" else b"B") + token[-2:]
    (tmp_path / "v3.jws").write_bytes(flipped)  # one signature bit flipped
    assert "bad-signature" in await fails("keys", "keyring", "list", v3, "--admins", admin_pub)


async def _list_as_json_and_piped(doc: str, admin_pub: str, statuses: dict[str, str]) -> None:
    code, missing = await cli("keys", "keyring", "list", doc)
    assert (code, "Missing option '--admins'" in missing) == (2, True), missing
    listed = json.loads(await ok("keys", "keyring", "list", doc, "--admins", admin_pub, "--json"))
    assert listed["version"] == 4
    assert {key["kid"]: key["status"] for key in listed["keys"]} == statuses
    code, narrow = await cli("keys", "keyring", "list", doc, "--admins", admin_pub, columns=40)
    assert code == 0, narrow
    for kid in statuses:  # whole kids on one line, whatever COLUMNS says when piped
        assert any(kid in line for line in narrow.splitlines()), narrow


async def test_keyring_push_to_the_bucket(
    tmp_path: Path, nats_server: EmbeddedServer, js: JetStreamContext, root: str
) -> None:
    (admin, admin_pub), (_, alice_pub) = await asyncio.gather(
        make_key(tmp_path, "admin"), make_key(tmp_path, "alice")
    )
    v1, v2 = str(tmp_path / "v1.jws"), str(tmp_path / "v2.jws")
    await ok("keys", "keyring", "init", "--admin", admin, "--out", v1)
    await ok("keys", "keyring", "add", v1, "--admin", admin, "--entry", alice_pub, "--out", v2)
    where = ("--url", nats_server.url, "--root", root, "--admins", admin_pub)
    out = await ok("keys", "keyring", "push", v2, *where)
    assert f"to {root}-keyring (revision 1)" in out
    kv = await js.key_value(keyring_bucket(root))
    assert (await kv.get(CURRENT)).value == (tmp_path / "v2.jws").read_bytes().strip()
    assert "keyring-rollback" in await fails("keys", "keyring", "push", v1, *where)
    out = await fails("keys", "keyring", "push", v1, "--url", "nats://127.0.0.1:1", "--root", root)
    assert "cannot connect" in out


def test_document_files_are_never_replaced_by_accident(tmp_path: Path) -> None:
    path = tmp_path / "doc.jws"
    write_keyring_file(str(path), b"v1")
    with pytest.raises(KeyringError, match="keyring-exists"):
        write_keyring_file(str(path), b"v2")
    (tmp_path / "link.jws").symlink_to(tmp_path / "nowhere")
    with pytest.raises(KeyringError, match="keyring-exists"):
        write_keyring_file(str(tmp_path / "link.jws"), b"v2")
    with pytest.raises(KeyringError, match="keyring-changed"):
        write_keyring_file(str(path), b"v2", replacing=b"v0\n")
    write_keyring_file(str(path), b"v2", replacing=b"v1\n")
    assert path.read_bytes() == b"v2\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["doc.jws", "link.jws"]  # no leftovers
    alice = Identity.generate(TENANT, "alice")
    assert read_key_entry(json.dumps(entry(alice).to_json())) == entry(alice)
    with pytest.raises(KeyringError, match="keyring-invalid-entry"):
        read_key_entry('{"tenant": "acme", "tenant": "acme"}')
