"""Request-reply latency (raw, hand-signed, eventwire) and import times for ``eventwire bench``."""

from __future__ import annotations

import asyncio
import os
import secrets
import statistics
import sys
import tempfile
from time import perf_counter
from typing import TYPE_CHECKING

import nacl.signing

import eventwire
from eventwire import CustomEvent, Identity, Keyring

from ._bench_cases import TENANT, filler, raw_payload
from ._bench_report import EVENTWIRE, HAND_SIGNED, RAW, ImportTime, Latency

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

    from eventwire import Event, Publishable

REQUEST_SIZE = 256
_TIMEOUT = 5.0
_WARMUP = 20


async def _timed(variant: str, call: Callable[[], Awaitable[object]], count: int) -> Latency:
    """``count`` sequential calls after a short warm-up; percentiles in microseconds."""
    for _ in range(min(_WARMUP, count)):
        await call()
    samples = []
    for _ in range(count):
        started = perf_counter()
        await call()
        samples.append((perf_counter() - started) * 1e6)
    cuts = statistics.quantiles(samples, n=100, method="inclusive") if count > 1 else samples * 99
    return Latency(variant, count, cuts[49], cuts[98], statistics.fmean(samples))


async def raw_request_reply(nc: Client, count: int) -> Latency:
    """Core NATS ``nc.request`` to a subscriber that echoes the payload."""
    subject = f"benchrr.{secrets.token_hex(5)}"
    payload = raw_payload(REQUEST_SIZE)

    async def respond(msg: Msg) -> None:
        await msg.respond(msg.data)

    async def call() -> object:
        return await nc.request(subject, payload, timeout=_TIMEOUT)

    sub = await nc.subscribe(subject, cb=respond)
    try:
        return await _timed(RAW, call, count)
    finally:
        await sub.unsubscribe()


async def hand_signed_request_reply(nc: Client, count: int) -> Latency:
    """As raw, with PyNaCl: the caller signs the request and verifies the reply, and back."""
    subject = f"benchrr.{secrets.token_hex(5)}"
    payload = raw_payload(REQUEST_SIZE)
    caller = nacl.signing.SigningKey.generate()
    server = nacl.signing.SigningKey.generate()
    caller_key, server_key = caller.verify_key, server.verify_key

    async def respond(msg: Msg) -> None:
        request = caller_key.verify(msg.data)
        await msg.respond(server.sign(request))

    async def call() -> object:
        reply = await nc.request(subject, caller.sign(payload), timeout=_TIMEOUT)
        return server_key.verify(reply.data)

    sub = await nc.subscribe(subject, cb=respond)
    try:
        return await _timed(HAND_SIGNED, call, count)
    finally:
        await sub.unsubscribe()


async def eventwire_request_reply(url: str, js: JetStreamContext, count: int) -> Latency:
    """``bus.request`` to an agent answering with ``bus.serve_requests``; signed both ways."""
    caller = Identity.generate(TENANT, "caller")
    server = Identity.generate(TENANT, "responder")
    item = CustomEvent(
        subject="custom.bench.request", type="bench", data={"p": filler(REQUEST_SIZE)}
    )

    async def answer(event: Event) -> Publishable:
        return CustomEvent(subject="custom.bench.reply", type="bench", data=event.data)

    root = f"bench{secrets.token_hex(5)}"
    async with eventwire.connect(
        url, tenant=TENANT, root=root, keyring=Keyring.of(caller, server), name="eventwire-bench"
    ) as bus:

        async def call() -> object:
            return await bus.request("responder", item, identity=caller, timeout=_TIMEOUT)

        try:
            await bus.serve_requests(server, answer)
            return await _timed(EVENTWIRE, call, count)
        finally:
            await js.delete_stream(bus.stream)


async def _wall_ms(code: str, env: dict[str, str]) -> float:
    started = perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        env=env,
    )
    if await proc.wait() != 0:
        raise RuntimeError(f"{sys.executable} -c {code!r} failed")
    return (perf_counter() - started) * 1e3


async def import_times(modules: tuple[str, ...], runs: int) -> list[ImportTime]:
    """Best-of-``runs`` wall time of ``python -c "import m"`` minus that of ``python -c pass``.

    The children share a private bytecode cache (``PYTHONPYCACHEPREFIX``) that a warm-up
    round fills, so every module is timed as an installed package is imported: from
    bytecode, whatever ``PYTHONDONTWRITEBYTECODE`` says. Rounds interleave the commands.
    """
    codes = {"": "pass", **{module: f"import {module}" for module in modules}}
    best = dict.fromkeys(codes, float("inf"))
    with tempfile.TemporaryDirectory(prefix="eventwire-bench-pyc-") as cache:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = cache
        for round_ in range(runs + 1):
            for key, code in codes.items():
                elapsed = await _wall_ms(code, env)
                if round_:
                    best[key] = min(best[key], elapsed)
    return [ImportTime(module, max(0.0, best[module] - best[""])) for module in modules]
