"""The command line, run as a user would: a separate process against a real server."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import sys
from typing import TYPE_CHECKING

import nats
from nats.js.api import StorageType, StreamConfig

import eventwire
from eventwire import CustomEvent, Event, RetryPolicy, Unprocessable
from tests.conftest import TENANT, make_identity, wait_until

if TYPE_CHECKING:
    from pathlib import Path

    from eventwire import EmbeddedServer


async def cli(*args: str, **env: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from eventwire.cli import main; main()", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", **env},
    )  # fmt: skip
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


async def test_demo_runs_and_refuses_the_forgeries() -> None:
    code, out = await cli("demo")
    assert code == 0, out
    assert out.count("REFUSED") == 2
    assert "unknown-key" in out
    assert "bad-signature" in out
    assert "demo complete: 9 events on the timeline, 2 forgeries refused" in out


async def test_dlq_list_show_redrive_purge(
    bus: eventwire.Bus, nats_server: EmbeddedServer, root: str
) -> None:
    alice = make_identity("alice", bus.keyring)

    async def reject(event: Event) -> None:
        raise Unprocessable("schema v1 is gone")

    async with bus.subscribe("custom.x", reject, durable="x", retry=RetryPolicy(2)) as sub:
        await bus.publish(CustomEvent("custom.x", "x", 1), identity=alice)
        await bus.publish(CustomEvent("custom.x", "x", 2), identity=alice)
        await wait_until(lambda: sub.stats.dead_lettered == 2)
    where = ("--url", nats_server.url, "--root", root, "--tenant", TENANT)

    code, out = await cli("dlq", "list", *where)
    assert code == 0, out
    assert out.count("unprocessable") == 2
    assert "schema v1 is gone" in out
    code, out = await cli("dlq", "list", *where, "--json")
    assert code == 0, out
    listed = json.loads(out)
    assert [(d["id"], d["reason"], d["error"]) for d in listed] == [
        (1, "unprocessable", "Unprocessable: schema v1 is gone"),
        (2, "unprocessable", "Unprocessable: schema v1 is gone"),
    ]
    assert {d["subject"] for d in listed} == {f"{root}.custom.x"}
    code, out = await cli("dlq", "show", "1", *where)
    assert code == 0, out
    assert "Nats-Msg-Id" in out
    assert f"{root}.custom.x" in out
    code, out = await cli("dlq", "redrive", "1", *where)
    assert (code, "redriven 1 -> stream seq 3" in out) == (0, True), out
    code, out = await cli("dlq", "redrive", *where)
    assert code == 2
    assert "give one entry id, or --all" in out
    code, out = await cli("dlq", "show", "1", *where)
    assert code == 1
    assert "no dead letter 1" in out
    code, out = await cli("dlq", "purge", *where)
    assert (code, "purged 1 dead letters" in out) == (0, True), out


async def test_streams_diff_and_apply(nats_server: EmbeddedServer, root: str) -> None:
    where = ("--url", nats_server.url, "--root", root)
    code, out = await cli("streams", "diff", *where)
    assert (code, out.count(" missing "), "7 of 12 drift" in out) == (1, 7, True), out
    assert out.count(" not yet made ") == 5, out  # made on first use: not drift
    code, out = await cli("streams", "apply", *where)
    assert (code, out.count(": created")) == (0, 12), out
    for name in ("stream '{}-audit'", "bucket '{}-agents'", "stream '{}-wftimers'"):
        assert name.format(root) + ": created" in out
    code, out = await cli("streams", "diff", *where)
    assert (code, out.count(" matches "), "no drift" in out) == (0, 12, True), out
    # Someone changes the events' duplicate window and the registry's ttl on the server.
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        for stream, change in (
            (f"{root}-events", {"duplicate_window": 5.0}),
            (f"KV_{root}-agents", {"max_age": 30.0}),
        ):
            config = (await js.stream_info(stream)).config
            await js.update_stream(dataclasses.replace(config, **change))
    finally:
        await nc.close()
    code, out = await cli("streams", "diff", *where)
    assert (code, out.count(" differs "), out.count(" matches ")) == (1, 2, 10), out
    assert "duplicate_window" in out
    assert "ttl" in out
    assert "2 of 12 drift" in out
    code, out = await cli("streams", "apply", *where)
    assert code == 0, out
    assert f"stream '{root}-events': updated duplicate_window: server has 5.0" in out
    assert f"bucket '{root}-agents': updated ttl: server has 30.0, code wants 15.0" in out
    assert out.count(": matches") == 10
    code, out = await cli("streams", "diff", *where)
    assert code == 0, out


async def test_streams_apply_names_what_cannot_change(
    nats_server: EmbeddedServer, root: str
) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        # The events stream as an operator might have made it by hand, in memory.
        subjects = [f"{root}.knowledge.>"]
        config = StreamConfig(name=f"{root}-events", subjects=subjects, storage=StorageType.MEMORY)
        await nc.jetstream().add_stream(config)
    finally:
        await nc.close()
    where = ("--url", nats_server.url, "--root", root)
    code, out = await cli("streams", "diff", *where)
    assert (code, "storage" in out, "recreate" in out) == (1, True, True), out
    code, out = await cli("streams", "apply", *where)
    assert code == 1, out
    assert f"stream '{root}-events': storage: server has 'memory', code wants 'file': " in out
    assert "cannot change in place" in out
    assert out.count(": created") == 11
    code, out = await cli("streams", "apply", *where, "--replicas", "3")  # one server only
    assert (code, out.count("the server refused to update")) == (1, 12), out


async def test_streams_never_print_credentials(nats_server: EmbeddedServer, root: str) -> None:
    secret_url = nats_server.url.replace("nats://", "nats://bob:s3cret-pw@")
    code, out = await cli("streams", "diff", "--url", secret_url, "--root", root)
    assert (code, "nats://***@127.0.0.1:" in out) == (1, True), out
    code, out = await cli("streams", "apply", "--url", secret_url, "--root", root)
    assert code == 0, out
    for url in ("nats://bob:s3cret-pw@127.0.0.1:1", "bob:s3cret-pw@127.0.0.1:1"):
        code, out = await cli("streams", "diff", "--url", url, "--root", root)
        assert (code, "error:" in out) == (2, True), out
        assert "s3cret" not in out
    code, out = await cli("streams", "diff", "--url", secret_url, "--root", "a.b")
    assert (code, "root: 'a.b' is not a subject token" in out) == (2, True), out


async def test_secure_demo_shows_sealing_policy_and_tenancy_in_the_audit_log() -> None:
    code, out = await cli("demo", "--secure")
    assert code == 0, out
    assert "acme/alice  reads 'Q3'" in out
    assert "not for it: no plaintext" in out
    assert "Forbidden" in out
    assert "policy-denied" in out
    assert "wrong-tenant" in out
    assert out.count("audit chain intact, 1 records") == 2


# -- eventwire policy check ----------------------------------------------------------------------

BAD_POLICY = """\
version = 1
[[rule]]
principal = "agent:summarizr"
publish = ["ew.knowledge.x", "foo.bar", "keyed.x"]
consume = ["capability.summarize.*"]
"""


async def test_policy_check_prints_one_line_per_finding(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(BAD_POLICY)
    code, out = await cli("policy", "check", str(path), "--agents", "summarizer,writer")
    assert code == 1, out
    assert out.splitlines() == [
        f"{path}:rule[0].principal: unknown-agent: 'agent:summarizr' is not a known agent "
        "(known: summarizer, writer); did you mean 'agent:summarizer'?",
        f"{path}:rule[0].publish[0]: never-matches: 'ew.knowledge.x' starts with the subject "
        "root 'ew': patterns are logical subjects, write 'knowledge.x'",
        f"{path}:rule[0].publish[1]: never-matches: 'foo.bar' can never match: 'foo' is not a "
        "family (knowledge, capability, task, error, status, agent, system, custom)",
        f"{path}:rule[0].publish[2]: reserved: 'keyed.x': 'keyed' is reserved for "
        "partitioning; write the event's own subject (keyed events are matched by it)",
    ]
    code, out = await cli("policy", "check", str(path), "--json")
    assert code == 1, out
    report = json.loads(out)
    assert (report["rules"], [f["kind"] for f in report["findings"]]) == (
        1, ["never-matches", "never-matches", "reserved"],
    )  # fmt: skip
    path.write_text(BAD_POLICY.replace("summarizr", "summarizer").split("publish")[0])
    code, out = await cli("policy", "check", str(path), "--agents", "summarizer")
    assert (code, out) == (0, f"{path}: 1 rules, no findings\n")


async def test_policy_check_against_a_tenant_and_bad_input(tmp_path: Path) -> None:
    deployment = eventwire.Deployment(tmp_path / "d")
    deployment.create_tenant("acme")
    deployment.add_agent("acme", "summarizer", capabilities=["summarize"])
    path = tmp_path / "policy.toml"
    path.write_text(BAD_POLICY.replace("agent:summarizr", "capability:summarise"))
    where = ("--tenant", "acme", "--dir", str(tmp_path / "d"))
    code, out = await cli("policy", "check", str(path), *where)
    assert code == 1, out
    assert "unknown-capability: 'capability:summarise': no known agent holds this" in out
    assert "did you mean 'capability:summarize'?" in out
    for args, expected, want in (
        ((str(tmp_path / "none.toml"),), "No such file or directory", 1),
        ((str(path), "--dir", str(tmp_path / "d")), "--dir needs --tenant", 2),
        ((str(path), "--tenant", "nobody", "--dir", str(tmp_path / "d")), "no tenant 'nobody'", 1),
    ):
        code, out = await cli("policy", "check", *args)
        assert (code, out.startswith("error: "), expected in out) == (want, True, True), out
        assert len(out.splitlines()) == 1
    path.write_text("version = 1\n[[rule]]\nprincipal = 7\n")
    code, out = await cli("policy", "check", str(path))
    assert (code, out) == (1, "error: policy rule[0].principal: expected a string, got int\n")


# -- eventwire server ----------------------------------------------------------------------------


async def test_server_is_the_bundled_nats_server_with_its_exit_codes(tmp_path: Path) -> None:
    code, out = await cli("server", "--version")
    assert (code, out.startswith("nats-server: v")) == (0, True), out
    code, out = await cli("server", "-c", str(tmp_path / "missing.conf"))
    assert (code, "nats-server: open " in out) == (1, True), out  # nats-server's own words
    code, out = await cli("server", "-c", "x", EVENTWIRE_NATS_SERVER=str(tmp_path / "no"))
    assert (code, out) == (1, f"error: EVENTWIRE_NATS_SERVER={tmp_path / 'no'} is not a file\n")


async def test_server_becomes_nats_server_and_gets_the_signals(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from eventwire.cli import main; main()",
        "server", "-a", "127.0.0.1", "-p", "-1", "--ports_file_dir", str(tmp_path),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    ports = tmp_path / f"nats-server_{proc.pid}.ports"  # named after the pid of the exec'd binary
    try:
        await wait_until(lambda: ports.exists() and bool(ports.read_text()), timeout=15)
        url = json.loads(ports.read_text())["nats"][0]
        await (await nats.connect(url)).close()
    finally:
        proc.send_signal(signal.SIGINT)
        _, log = await asyncio.wait_for(proc.communicate(), 15)
    assert (proc.returncode, b"Server Exiting" in log) == (0, True), log
