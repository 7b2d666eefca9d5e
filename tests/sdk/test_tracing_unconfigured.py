"""Tracing with opentelemetry-api installed but no tracer provider configured: no span is
started, and a trace still passes through an agent unbroken (as OpenTelemetry's no-op
tracer would leave it). Run in a fresh interpreter: the tests of ``test_tracing`` set the
process's one global provider."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from eventwire import EmbeddedServer

_SCRIPT = textwrap.dedent(
    """
    import asyncio, secrets, sys
    from opentelemetry import context, trace
    import eventwire
    from eventwire import Keyring, KnowledgeShared, StatusUpdate
    from eventwire._tracing import TRACING

    UPSTREAM = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"

    async def main(url):
        assert TRACING is not None and not TRACING.configured()
        first = eventwire.Identity.generate("acme", "first")
        relay = eventwire.Identity.generate("acme", "relay")
        keyring = Keyring.of(first, relay)
        seen = {}
        done = asyncio.Event()
        async with eventwire.connect(url, tenant="acme", root="u" + secrets.token_hex(4),
                                     keyring=keyring) as bus:
            async def on_knowledge(event):
                seen["knowledge"] = event.traceparent
                # inside the handler the event's remote span is current: it is signed on
                await bus.publish(StatusUpdate(component="relay", state="relayed"), identity=relay)

            async def on_status(event):
                seen["status"] = event.traceparent
                done.set()

            async with bus.subscribe("knowledge.>", on_knowledge, durable="k"), \\
                    bus.subscribe("status.>", on_status, durable="s"):
                remote = trace.NonRecordingSpan(trace.SpanContext(
                    int("ab" * 16, 16), int("cd" * 8, 16), is_remote=True,
                    trace_flags=trace.TraceFlags(1)))
                token = context.attach(trace.set_span_in_context(remote))
                try:
                    await bus.publish(KnowledgeShared(topic="t", content="c"), identity=first)
                finally:
                    context.detach(token)
                await asyncio.wait_for(done.wait(), 20)
        assert seen == {"knowledge": UPSTREAM, "status": UPSTREAM}, seen
        assert not TRACING.configured()
        print("ok")

    asyncio.run(main(sys.argv[1]))
    """
)


def test_a_trace_passes_through_an_agent_without_a_provider(nats_server: EmbeddedServer) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, nats_server.url],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
