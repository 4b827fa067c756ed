"""OpenTelemetry over a real hub: the publisher's span is the parent of the worker's span.

Each test has its own SDK tracer provider with an in-memory exporter, given to its clients
(``Client(tracer_provider=...)``): the process-wide provider stays unset, so other tests'
tasks carry no trace context. The global provider, and a process without OpenTelemetry, are
tested in subprocesses at the end.
"""

from __future__ import annotations

import ast
import asyncio
import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry import context, propagate, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from websockets.asyncio.client import connect

from taskhub import Client, Server, TaskFailed, Worker
from taskhub import sync as taskhub_sync
from tests.conftest import ClientFactory, ServerFactory, until
from tests.e2e.hubproc import HubProcess
from tests.redisproc import RedisProcess


class Spans:
    """A tracer provider whose finished spans can be read back."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("test")

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if s.name == name]

    async def wait(self, name: str, n: int = 1) -> list[ReadableSpan]:
        return list(await until(lambda: len(self.named(name)) >= n and self.named(name)))


@pytest.fixture
def spans() -> Iterator[Spans]:
    s = Spans()
    yield s
    s.provider.shutdown()


def ids(span: ReadableSpan) -> tuple[int, int]:
    ctx = span.get_span_context()
    assert ctx is not None
    return ctx.trace_id, ctx.span_id


def parent_of(span: ReadableSpan) -> tuple[int, int] | None:
    return (span.parent.trace_id, span.parent.span_id) if span.parent else None


async def test_worker_span_is_the_child_of_the_publish_span(
    make_client: ClientFactory, spans: Spans
) -> None:
    worker = await make_client("mailer", tracer_provider=spans.provider)
    publisher = await make_client("web", tracer_provider=spans.provider)

    async def send(task: Any) -> str:
        with spans.tracer.start_as_current_span("smtp"):  # the handler's own span
            return f"sent to {await task.get_payload()}"

    await worker.sub("email:send", send)
    with spans.tracer.start_as_current_span("POST /signup"):
        handle = publisher.pub("email:send", "ada@example.com")
    assert await handle.get_result(timeout=5) == "sent to ada@example.com"

    [request] = spans.named("POST /signup")
    [publish] = await spans.wait("publish email:send")
    [process] = await spans.wait("process email:send")
    [smtp] = spans.named("smtp")
    assert publish.kind is SpanKind.PRODUCER and parent_of(publish) == ids(request)
    assert process.kind is SpanKind.CONSUMER and parent_of(process) == ids(publish)
    assert parent_of(smtp) == ids(process)
    assert process.attributes is not None
    assert process.attributes["taskhub.task.id"] == handle.id
    assert process.attributes["messaging.message.id"] == handle.id
    assert process.attributes["taskhub.action"] == "email:send"
    assert process.attributes["taskhub.attempt"] == 1
    assert process.attributes["messaging.system"] == "taskhub"
    assert process.attributes["messaging.consumer.group.name"] == "mailer"
    assert process.status.status_code is StatusCode.UNSET
    # Stored with the task: the view shows the W3C context the worker was given.
    view = await publisher.get(handle.id or "")
    trace_id = format(ids(publish)[0], "032x")
    assert view["options"]["trace"]["traceparent"].split("-")[1] == trace_id


async def test_a_failing_handler_marks_its_span_and_each_retry_has_one(
    make_client: ClientFactory, spans: Spans
) -> None:
    worker = await make_client("mailer", tracer_provider=spans.provider)
    publisher = await make_client("web", tracer_provider=spans.provider)

    async def send(task: Any) -> None:
        raise ValueError(f"no such mailbox (attempt {task.attempt})")

    await worker.sub("email:send", send)
    handle = publisher.pub("email:send", "nobody@example.com", retries=1, backoff=0)
    with pytest.raises(TaskFailed):
        await handle.get_result(timeout=5)

    [publish] = await spans.wait("publish email:send")
    tries = sorted(
        await spans.wait("process email:send", 2),
        key=lambda s: s.attributes["taskhub.attempt"] if s.attributes else 0,
    )
    assert [s.attributes["taskhub.attempt"] for s in tries if s.attributes] == [1, 2]
    for attempt, span in enumerate(tries, 1):
        assert parent_of(span) == ids(publish)
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == f"ValueError: no such mailbox (attempt {attempt})"
        [event] = [e for e in span.events if e.name == "exception"]
        assert event.attributes is not None
        assert event.attributes["exception.type"] == "ValueError"


async def test_chain_steps_are_children_of_the_chain_publisher(
    make_client: ClientFactory, spans: Spans
) -> None:
    worker = await make_client("w", tracer_provider=spans.provider)
    publisher = await make_client("web", tracer_provider=spans.provider)
    await worker.sub("geo:geocode", lambda task: {"lat": 59.9})
    await worker.sub("weather:forecast", lambda task: f"rain at {task.previous_result['lat']}")

    with spans.tracer.start_as_current_span("GET /forecast"):
        handle = publisher.chain([("geo:geocode", "Oslo"), ("weather:forecast", None)])
    assert await handle.get_result(timeout=5) == "rain at 59.9"
    group = publisher.group([("geo:geocode", "Oslo"), ("geo:geocode", "Bergen")])
    assert await group.get_result(timeout=5) == [{"lat": 59.9}, {"lat": 59.9}]

    [request] = spans.named("GET /forecast")
    [publish] = await spans.wait("publish taskhub:chain")
    [publish_group] = await spans.wait("publish taskhub:group")
    assert publish.kind is SpanKind.PRODUCER and parent_of(publish) == ids(request)
    [forecast] = await spans.wait("process weather:forecast")
    geocodes = await spans.wait("process geo:geocode", 3)
    assert parent_of(forecast) == ids(publish)
    assert sorted(parent_of(s) or (0, 0) for s in geocodes) == sorted(
        [ids(publish), ids(publish_group), ids(publish_group)]
    )
    assert parent_of(publish_group) is None  # no span was current: a trace of its own


async def test_the_trace_survives_a_hub_restart(
    make_server: ServerFactory, spans: Spans, tmp_path: Path
) -> None:
    store = f"sqlite:///{tmp_path / 'hub.db'}"
    first = await make_server(store=store)
    async with Client(first.url, name="web", tracer_provider=spans.provider) as publisher:
        handle = publisher.pub("email:send", "ada@example.com")
        await handle.accepted()
    await first.stop()  # published, never offered: only the store has it now

    second = await make_server(store=store)
    async with Client(second.url, name="mailer", tracer_provider=spans.provider) as worker:
        await worker.sub("email:send", lambda task: "sent")
        [process] = await spans.wait("process email:send")
    [publish] = spans.named("publish email:send")
    assert parent_of(process) == ids(publish)
    assert process.attributes is not None and process.attributes["taskhub.task.id"] == handle.id


async def test_a_requeued_dead_letter_continues_the_trace(
    make_client: ClientFactory, spans: Spans
) -> None:
    worker = await make_client("w", tracer_provider=spans.provider)
    publisher = await make_client("web", tracer_provider=spans.provider)
    runs: list[int] = []

    async def flaky(task: Any) -> str:
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("down")
        return "done"

    await worker.sub("job:run", flaky)
    handle = publisher.pub("job:run", retries=0)
    with pytest.raises(TaskFailed):
        await handle.get_result(timeout=5)
    copy_id = await publisher.requeue(handle.id or "")
    assert await until(lambda: len(runs) == 2)
    [publish] = spans.named("publish job:run")
    tries = await spans.wait("process job:run", 2)
    assert [parent_of(s) for s in tries] == [ids(publish), ids(publish)]
    view = await publisher.get(copy_id)
    assert view["options"]["trace"] == (await publisher.get(handle.id or ""))["options"]["trace"]


async def test_the_trace_reaches_a_worker_of_the_hub_that_takes_over(
    spans: Spans,
) -> None:
    """Two hubs on one Redis: the task is published through the follower, its leader is
    killed before a worker comes, and the worker of the hub that takes over continues the
    trace, read back from Redis."""
    redis = RedisProcess().start()
    store = f"{redis.url}?prefix=t{uuid.uuid4().hex[:8]}"
    first = HubProcess(store, env={"TASKHUB_LEASE": "1"}).start()
    second = HubProcess(store, env={"TASKHUB_LEASE": "1"}).start()
    try:
        async with httpx.AsyncClient() as http:
            health = await http.get(f"http://127.0.0.1:{first.port}/healthz")
        assert health.json()["role"] == "leader"
        async with Client(second.url, name="web", tracer_provider=spans.provider) as publisher:
            handle = publisher.pub("job:run")
            await handle.accepted()
        first.kill()  # the leader (the first to start) had the task in memory
        async with Client(second.url, name="w", tracer_provider=spans.provider) as worker:
            await worker.sub("job:run", lambda task: "ok")
            [process] = await spans.wait("process job:run")
        [publish] = spans.named("publish job:run")
        assert parent_of(process) == ids(publish)
        assert process.attributes is not None
        assert process.attributes["taskhub.task.id"] == handle.id
    finally:
        first.stop()
        second.stop()
        redis.cleanup()


async def test_sync_client_carries_the_callers_span_both_ways(server: Server, spans: Spans) -> None:
    def scenario() -> None:
        with (
            taskhub_sync.Client(server.url, name="w", tracer_provider=spans.provider) as worker,
            taskhub_sync.Client(server.url, name="web", tracer_provider=spans.provider) as pub,
        ):

            def resize(task: taskhub_sync.Task) -> int:
                with spans.tracer.start_as_current_span("resize pixels"):  # in a pool thread
                    assert threading.current_thread().name.startswith("taskhub-img:resize")
                    return int(task.payload) * 2

            worker.sub("img:resize", resize)
            with spans.tracer.start_as_current_span("view"):  # this thread's context
                handle = pub.pub("img:resize", 21)
            assert handle.get_result(timeout=5) == 42

    await asyncio.to_thread(scenario)
    [view] = spans.named("view")
    [publish] = spans.named("publish img:resize")
    [process] = await spans.wait("process img:resize")
    [inner] = spans.named("resize pixels")
    assert parent_of(publish) == ids(view)
    assert parent_of(process) == ids(publish)
    assert parent_of(inner) == ids(process)


async def test_a_pub_that_cannot_be_sent_ends_its_span_as_failed(
    make_client: ClientFactory, spans: Spans
) -> None:
    publisher = await make_client("web", tracer_provider=spans.provider)
    with pytest.raises(TypeError):
        publisher.pub("job:run", {"when": object()})
    [publish] = spans.named("publish job:run")  # ended, not left open
    assert publish.status.status_code is StatusCode.ERROR
    assert publish.status.description is not None
    assert publish.status.description.startswith("TypeError: ")


async def test_worker_handlers_run_inside_their_process_span(
    server: Server, make_client: ClientFactory, spans: Spans
) -> None:
    """The worker runtime runs async handlers on a loop of their own and plain functions in
    threads: the process span is current in both, so the handlers' spans are its children."""
    worker = Worker(server.url, name="w", tracer_provider=spans.provider)

    @worker.task("img:resize")
    async def resize(task: Any) -> str:
        with spans.tracer.start_as_current_span("resize pixels"):
            return "resized"

    @worker.task("img:upload")
    def upload(task: Any) -> str:
        with spans.tracer.start_as_current_span("upload bytes"):
            return "uploaded"

    publisher = await make_client("web", tracer_provider=spans.provider)
    async with worker:
        assert await publisher.pub("img:resize").get_result(timeout=10) == "resized"
        assert await publisher.pub("img:upload").get_result(timeout=10) == "uploaded"
    for action, inner in (("img:resize", "resize pixels"), ("img:upload", "upload bytes")):
        [publish] = spans.named(f"publish {action}")
        [process] = await spans.wait(f"process {action}")
        [child] = spans.named(inner)
        assert parent_of(process) == ids(publish)
        assert parent_of(child) == ids(process), action


async def test_a_cancelled_task_ends_its_span_as_revoked(
    make_client: ClientFactory, spans: Spans
) -> None:
    worker = await make_client("w", tracer_provider=spans.provider)
    publisher = await make_client("web", tracer_provider=spans.provider)
    started = asyncio.Event()

    async def forever(task: Any) -> None:
        started.set()
        await asyncio.Event().wait()

    await worker.sub("job:run", forever)
    handle = publisher.pub("job:run")
    await asyncio.wait_for(started.wait(), 5)
    await handle.cancel()
    [process] = await spans.wait("process job:run")
    assert process.status.status_code is StatusCode.ERROR
    assert process.status.description == "revoked: cancelled"


async def test_without_an_sdk_an_incoming_context_is_passed_on(
    make_client: ClientFactory,
) -> None:
    """Only the API: no spans are recorded, yet a context received from upstream (an
    incoming request's traceparent) still reaches the worker, as OpenTelemetry's no-op
    tracer passes it through. With nothing current, no trace option is sent at all."""
    worker = await make_client("w")  # the global provider: unset, so no-op
    publisher = await make_client("web")
    seen: list[Any] = []

    def work(task: Any) -> None:
        seen.append(trace.get_current_span().get_span_context())

    await worker.sub("job:run", work)
    incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    token = context.attach(propagate.extract({"traceparent": incoming}))
    try:
        handle = publisher.pub("job:run")
    finally:
        context.detach(token)
    await handle.get_result(timeout=5)
    view = await publisher.get(handle.id or "")
    assert view["options"]["trace"] == {"traceparent": incoming}
    assert seen[0].trace_id == 0x0AF7651916CD43DD8448EB211C80319C

    plain = publisher.pub("job:run")
    await plain.get_result(timeout=5)
    assert "trace" not in (await publisher.get(plain.id or ""))["options"]


async def test_http_publish_takes_the_traceparent_header(
    make_client: ClientFactory, server: Server, spans: Spans
) -> None:
    worker = await make_client("w", tracer_provider=spans.provider)
    await worker.sub("job:run", lambda task: "ok")
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    base = server.url.replace("ws://", "http://")
    async with httpx.AsyncClient(base_url=base) as http:
        answer = await http.post(
            "/v1/tasks",
            json={"action": "job:run"},
            headers={"traceparent": traceparent, "tracestate": "vendor=x"},
        )
        assert answer.status_code == 201, answer.text
        assert answer.json()["options"]["trace"] == {
            "traceparent": traceparent,
            "tracestate": "vendor=x",
        }
        bad = await http.post(
            "/v1/tasks", json={"action": "job:run", "options": {"trace": {"traceparent": 1}}}
        )
        assert bad.status_code == 400 and "trace" in bad.json()["message"], bad.text
    [process] = await spans.wait("process job:run")
    assert process.parent is not None and process.parent.span_id == 0x00F067AA0BA902B7
    assert process.parent.trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E4736


async def test_http_add_gives_the_traceparent_header_to_every_step(
    make_client: ClientFactory, server: Server, spans: Spans
) -> None:
    worker = await make_client("w", tracer_provider=spans.provider)
    await worker.sub("job:first", lambda task: {"n": 1})
    await worker.sub("job:second", lambda task: "ok")
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    base = server.url.replace("ws://", "http://")
    async with httpx.AsyncClient(base_url=base) as http:
        answer = await http.post(
            "/add",
            json={"tasks": [{"task": "job:first"}, {"task": "job:second"}]},
            headers={"traceparent": traceparent},
        )
        assert answer.status_code == 201, answer.text
    for action in ("job:first", "job:second"):
        [process] = await spans.wait(f"process {action}")
        assert process.parent is not None
        assert process.parent.trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E4736


async def test_a_pull_consumers_lease_carries_the_trace(
    make_client: ClientFactory, server: Server, spans: Spans
) -> None:
    """An HTTP pull consumer gets the context to continue the trace with its own tracer."""
    publisher = await make_client("web", tracer_provider=spans.provider)
    base = server.url.replace("ws://", "http://")
    async with httpx.AsyncClient(base_url=base) as http:
        consumer = await http.post("/v1/consumers", json={"actions": ["pdf:render"]})
        assert consumer.status_code == 201, consumer.text
        url = f"/v1/consumers/{consumer.json()['consumer_id']}/fetch"
        token = {"X-Consumer-Token": consumer.json()["consumer_token"]}
        handle = publisher.pub("pdf:render", {"page": 1})
        lease = await http.post(url, params={"wait": 5}, headers=token)
        assert lease.status_code == 200, lease.text
    [publish] = spans.named("publish pdf:render")
    parent = propagate.extract(lease.json()["trace"])
    assert ids(publish) == (
        trace.get_current_span(parent).get_span_context().trace_id,
        trace.get_current_span(parent).get_span_context().span_id,
    )
    assert lease.json()["task_id"] == await handle.accepted()


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"trace": {"traceparent": 1}}, "trace"),  # not strings: msgspec names the field
        ({"trace": {f"k{i}": "v" for i in range(9)}}, "9 fields; at most 8"),
        ({"trace": {"baggage": "x" * 9000}}, "9007 characters; at most 8192"),
    ],
)
async def test_a_bad_trace_option_is_refused_by_name(
    server: Server, options: dict[str, Any], words: str
) -> None:
    for msg in (
        {"op": "pub", "action": "job:run", "options": options, "ref": 1},
        {"op": "chain", "steps": [{"action": "job:run"}], "ref": 1, **options},
    ):
        async with connect(
            server.url + "/v1/ws", additional_headers={"Authorization": "Bearer raw:"}
        ) as ws:
            assert json.loads(await ws.recv())["op"] == "welcome"
            await ws.send(json.dumps(msg))
            answer = json.loads(await ws.recv())
            assert answer["op"] == "error" and answer["ref"] == 1
            assert "trace" in answer["message"] and words in answer["message"], answer


# --- in fresh processes --------------------------------------------------------------------
# The hub runs in a process of its own: FastAPI itself imports OpenTelemetry's API, so only a
# process that is a client alone can be without it (pip install of the client only).

SCENARIO = """
import asyncio, sys
from taskhub import Client

async def main(url):
    async with Client(url, name="w") as worker, Client(url, name="p") as pub:
        await worker.sub("job:run", lambda task: task.attempt)
        handle = pub.chain([("job:run", 1), ("job:run", None)])
        assert await handle.get_result(timeout=5) == 1
        first = pub.pub("job:run")
        assert await first.get_result(timeout=5) == 1
        view = await pub.get(first.id)
        print("trace" in view["options"])
    print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))

asyncio.run(main(sys.argv[1]))
"""

BLOCK_OPENTELEMETRY = """
import sys
class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, NotInstalled())
"""

GLOBAL_PROVIDER = """
import atexit
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
atexit.register(lambda: print(sorted(s.name for s in exporter.get_finished_spans())))
"""


@pytest.fixture(scope="module")
def hub() -> Iterator[HubProcess]:
    proc = HubProcess("memory://").start()
    yield proc
    proc.stop()


def run_python(code: str, *args: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_without_opentelemetry_nothing_changes_and_nothing_is_imported(hub: HubProcess) -> None:
    """As if the extra were not installed: the import fails, the client works as before,
    its tasks carry no trace, and no OpenTelemetry module was loaded."""
    assert run_python(BLOCK_OPENTELEMETRY + SCENARIO, hub.url) == ["False", "[]"]


LATE_SET_UP = """
import asyncio, sys
from taskhub import Client

async def main(url):
    async with Client(url, name="w") as worker, Client(url, name="p") as pub:
        await worker.sub("job:run", lambda task: task.attempt)
        before = pub.pub("job:run")
        await before.get_result(timeout=5)
        print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
        exec(SET_UP, globals())  # the application sets tracing up only now
        after = pub.pub("job:run")
        await after.get_result(timeout=5)
        print(["trace" in (await pub.get(h.id))["options"] for h in (before, after)])

SET_UP = sys.argv[2]
asyncio.run(main(sys.argv[1]))
"""


def test_tracing_starts_when_the_application_imports_opentelemetry(hub: HubProcess) -> None:
    """Installed but not imported: the client imports nothing and sends no trace (a process
    that does not trace pays nothing); set up later, it traces from then on."""
    lines = run_python(LATE_SET_UP, hub.url, GLOBAL_PROVIDER)
    assert lines[0] == "[]"
    assert lines[1] == "[False, True]"
    assert ast.literal_eval(lines[2]) == ["process job:run", "publish job:run"]


def test_the_global_tracer_provider_is_used_by_default(hub: HubProcess) -> None:
    lines = run_python(GLOBAL_PROVIDER + SCENARIO, hub.url)
    assert lines[0] == "True"
    spans = ast.literal_eval(lines[-1])  # the sorted span names, printed at exit
    assert spans == sorted(
        [
            *("publish taskhub:chain", "process job:run", "process job:run"),
            *("publish job:run", "process job:run"),
        ]
    )
