"""The WebSocket wire protocol, version 1: message shapes and frame encoding.

A frame is one JSON text message: either one message object or an array of them (clients and
the hub batch). Every message has an ``op``. See ``docs/protocol.md``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar, cast

import msgspec
from msgspec import UNSET, UnsetType

from taskhub.errors import ProtocolError, UnknownOperation

PROTOCOL_VERSION = 1
WS_PATH = "/v1/ws"


class _Msg(msgspec.Struct, tag_field="op", forbid_unknown_fields=False):
    pass


class PubOptions(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Per-task options. UNSET means "the hub default"; ``None`` timeouts mean "forever"."""

    timeout: float | UnsetType | None = UNSET  # end timeout, seconds after start
    start_timeout: float | UnsetType | None = UNSET
    priority: int = 0
    key: str | None = None
    retries: int | UnsetType = UNSET
    max_attempts: int | UnsetType = UNSET
    delay: float = 0.0  # seconds; human intervals are parsed by the client
    at: float | None = None  # epoch seconds
    # Debounce (seconds): a task of the same action and key still waiting stands for this pub.
    once_every: float | None = None
    backoff: float | UnsetType = UNSET  # first retry delay, doubled per retry (with jitter)
    backoff_max: float | UnsetType = UNSET  # cap of the retry delay
    # Tasks with the same key are worked one at a time per group, in publish order.
    partition_key: str | None = None
    # Trace context carried to the worker (W3C traceparent, tracestate; docs/tracing.md).
    trace: dict[str, str] | None = None


# Payloads and results cross the hub as the JSON the publisher or worker wrote: decoding a
# value the hub never looks at and encoding it again for the store, the worker and the
# publisher cost ~5% of the hub's CPU per task, and a decoded small dict takes ~3x the
# memory of its JSON for as long as the task lives (docs/performance.md).
NULL = msgspec.Raw(b"null")


class Pub(_Msg, tag="pub"):
    action: str
    payload: msgspec.Raw = NULL
    options: PubOptions | None = None
    ref: int | None = None


class WorkerOptions(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Defaults a worker declares for the tasks it takes (``sub.options``): they apply to
    what the publisher did not set (publisher > worker > hub config > hub default)."""

    timeout: float | UnsetType | None = UNSET  # end timeout; None: no end timeout
    retries: int | UnsetType = UNSET
    max_attempts: int | UnsetType = UNSET
    backoff: float | UnsetType = UNSET
    backoff_max: float | UnsetType = UNSET


# The names of WorkerOptions, declared once: the client, the lifecycle and the docs' tests
# read them from here.
WORKER_OPTIONS: tuple[str, ...] = WorkerOptions.__struct_fields__


class Sub(_Msg, tag="sub"):
    action: str
    group: str | None = None
    concurrency: int = 1
    observe: bool = False
    durable: bool = False
    options: WorkerOptions | None = None
    ref: int | None = None


class Unsub(_Msg, tag="unsub"):
    action: str
    group: str | None = None
    ref: int | None = None


class _Step(_Msg):
    task: str
    attempt: int
    ref: int | None = None


class Ack(_Step, tag="ack"):
    pass


class Pickup(_Step, tag="pickup"):
    pass


class Update(_Step, tag="update"):
    data: Any = None


class Return(_Step, tag="return"):
    result: msgspec.Raw = NULL


class Drop(_Step, tag="drop"):
    pass


class ErrorInfo(msgspec.Struct, omit_defaults=True):
    type: str = "Error"
    message: str = ""
    traceback: str | None = None  # the handler's, cut by the hub to MAX_TRACEBACK characters


# The longest traceback the hub keeps with an error (the last characters are kept: the
# innermost frames and the exception line are what explains a failure).
MAX_TRACEBACK = 16 * 1024


class Fail(_Step, tag="fail"):
    error: ErrorInfo = msgspec.field(default_factory=ErrorInfo)
    retry: bool = True  # False: do not retry even if retries remain
    # Seconds: offer again after exactly this delay (the handler raised Retry), as long as
    # max_attempts allows; `retries` and the backoff do not apply.
    delay: float | None = None


class Release(_Step, tag="release"):
    """Hand a delivery back unfinished (a worker stopping): it is offered again, to another
    connection when there is one, without counting a try."""


class Extend(_Step, tag="extend"):
    """Push the task's end deadline to at least ``seconds`` from now."""

    seconds: float = 0.0


class Cancel(_Msg, tag="cancel"):
    task: str
    ref: int | None = None


class GetPayload(_Msg, tag="payload"):
    task: str
    ref: int | None = None


class Get(_Msg, tag="get"):
    task: str
    ref: int | None = None


class Follow(_Msg, tag="follow"):
    """Receive this task's events (a publisher re-attaching after a reconnect)."""

    task: str
    ref: int | None = None


class Subscribe(_Msg, tag="subscribe"):
    """Receive broadcast events on ``topic`` (a pattern: ``*`` segments, trailing ``>``)."""

    topic: str
    ref: int | None = None


class Unsubscribe(_Msg, tag="unsubscribe"):
    topic: str
    ref: int | None = None


class Emit(_Msg, tag="emit"):
    """Broadcast ``data`` to every other connection subscribed to a matching pattern."""

    topic: str
    data: Any = None
    ref: int | None = None


class Watch(_Msg, tag="watch"):
    """Receive every task event of the tasks whose action matches ``pattern``."""

    pattern: str
    ref: int | None = None


class Unwatch(_Msg, tag="unwatch"):
    pattern: str
    ref: int | None = None


class ChainStep(msgspec.Struct, forbid_unknown_fields=True):
    action: str
    payload: Any = None  # None in a chain: the previous step's result
    options: PubOptions | None = None


class Chain(_Msg, tag="chain"):
    """Run steps one after another (``mode="chain"``) or all at once (``"group"``)."""

    steps: list[ChainStep]
    mode: Literal["chain", "group"] = "chain"
    merge_input: bool = False  # chain: merge the previous result over a dict payload
    trace: dict[str, str] | None = None  # given to every step without one (docs/tracing.md)
    ref: int | None = None


class Schedule(_Msg, tag="schedule"):
    """Create or replace the recurring schedule ``name`` (docs/scheduling.md)."""

    name: str
    cron: str
    action: str
    payload: Any = None
    options: PubOptions | None = None
    timezone: str = "UTC"
    ref: int | None = None


class Unschedule(_Msg, tag="unschedule"):
    name: str
    ref: int | None = None


class Schedules(_Msg, tag="schedules"):
    """List the schedules this credential may see."""

    ref: int | None = None


class Queues(_Msg, tag="queues"):
    """List the group queues (durable or not) this credential may see."""

    ref: int | None = None


class Purge(_Msg, tag="purge"):
    """Fail the group's waiting deliveries (reason ``purged``); ``forget`` also removes its
    durable subscription."""

    action: str
    group: str
    forget: bool = False
    ref: int | None = None


class DeadLetters(_Msg, tag="dead_letters"):
    action: str | None = None
    ref: int | None = None


class DeadLetter(_Msg, tag="dead_letter"):
    """One dead letter, with its payload."""

    task: str
    ref: int | None = None


class Requeue(_Msg, tag="requeue"):
    """Publish a fresh copy of a dead letter; answers with the new task's id."""

    task: str
    ref: int | None = None


_Label = Annotated[str, msgspec.Meta(max_length=255)]


class Hello(_Msg, tag="hello"):
    """Who is connecting, for the dashboard's workers view: every field is optional, and a
    client that sends no ``hello`` works the same (it is shown without them)."""

    client: _Label | None = None  # the library, e.g. "taskhub-python"
    version: _Label | None = None  # the library's version
    host: _Label | None = None  # the machine's host name
    pid: Annotated[int, msgspec.Meta(ge=0)] | None = None
    # True: the client reads batched messages from the hub (``offers``; docs/protocol.md §2).
    batch: bool = False
    # True: the client takes the ``start`` events of the tasks it follows as one ``starts``
    # message per frame, naming the tasks (docs/protocol.md, "starts").
    starts: bool = False
    ref: int | None = None


# --- batched messages (docs/protocol.md, "Batched messages") ---------------------------------
# The most items one batched message may carry; the hub says so in its welcome
# (``max_batch``), and a client that reads it there may send batched messages. The same limit
# as ``POST /v1/tasks:batch``.
MAX_BATCH = 1000


class _Batch(_Msg):
    """Several messages of one kind in one: each item is that message without its ``op`` (an
    ``op`` it carries must be the single kind), applied in order exactly as the single
    message would be, with its own answer. An item that cannot be decoded is a :class:`Bad`
    in ``items`` (see :func:`decode_frame`); the others are still applied."""

    ref: int | None = None


class Pubs(_Batch, tag="pubs"):
    """Several ``pub``: the batch's one ``ref`` is answered by one ``ok`` whose ``items``
    hold each item's answer in order (a task, or the item's error)."""

    items: list[Pub] = msgspec.field(default_factory=list)


class Acks(_Batch, tag="acks"):
    items: list[Ack] = msgspec.field(default_factory=list)


class Pickups(_Batch, tag="pickups"):
    items: list[Pickup] = msgspec.field(default_factory=list)


class Returns(_Batch, tag="returns"):
    items: list[Return] = msgspec.field(default_factory=list)


# Each batched kind and the kind of its items.
BATCHES: dict[type[_Batch], type[_Msg]] = {Pubs: Pub, Acks: Ack, Pickups: Pickup, Returns: Return}


Admin = Schedule | Unschedule | Schedules | Queues | Purge | DeadLetters | DeadLetter | Requeue

Inbound = (
    Pub
    | Sub
    | Unsub
    | Ack
    | Pickup
    | Update
    | Return
    | Drop
    | Fail
    | Release
    | Extend
    | Cancel
    | GetPayload
    | Get
    | Follow
    | Subscribe
    | Unsubscribe
    | Emit
    | Watch
    | Unwatch
    | Chain
    | Schedule
    | Unschedule
    | Schedules
    | Queues
    | Purge
    | DeadLetters
    | DeadLetter
    | Requeue
    | Hello
    | Pubs
    | Acks
    | Pickups
    | Returns
)
OPS: frozenset[str] = frozenset(
    str(c.__struct_config__.tag)
    for c in (
        Pub,
        Sub,
        Unsub,
        Ack,
        Pickup,
        Update,
        Return,
        Drop,
        Fail,
        Release,
        Extend,
        Cancel,
        GetPayload,
        Get,
        Follow,
        Subscribe,
        Unsubscribe,
        Emit,
        Watch,
        Unwatch,
        Chain,
        Schedule,
        Unschedule,
        Schedules,
        Queues,
        Purge,
        DeadLetters,
        DeadLetter,
        Requeue,
        Hello,
        Pubs,
        Acks,
        Pickups,
        Returns,
    )
)

_frame_decoder = msgspec.json.Decoder(list[Inbound] | Inbound)
_one_decoder = msgspec.json.Decoder(Inbound)
_raw_list_decoder = msgspec.json.Decoder(list[msgspec.Raw])
_raw_decoder = msgspec.json.Decoder(msgspec.Raw)
_any_decoder = msgspec.json.Decoder()
encoder = msgspec.json.Encoder()


class Bad(msgspec.Struct):
    """A message in a frame that could not be decoded: answered with an error, others go on."""

    error: ProtocolError
    ref: int | None = None


def decode_frame(data: bytes | str) -> list[Inbound | Bad]:
    """Decode a frame into messages; a bad message becomes :class:`Bad`, the rest survive.

    Raises :class:`ProtocolError` if the frame is not JSON at all, or nests deeper than
    msgspec decodes (~1000 levels): then no message of it can be told from the next.
    """
    try:
        out = _frame_decoder.decode(data)
    except msgspec.ValidationError:
        pass  # at least one message is bad: decode one by one below to name it
    except msgspec.DecodeError:
        pass  # not JSON, or JSON msgspec cannot read in one message (1e400): see below
    except RecursionError:
        raise ProtocolError(_TOO_DEEP) from None
    else:
        # A list of good messages is a list[Inbound | Bad] that holds no Bad yet.
        return cast("list[Inbound | Bad]", out) if isinstance(out, list) else [out]
    text = data.lstrip() if isinstance(data, bytes) else data.lstrip().encode()
    try:
        # Raw checks the JSON's syntax (not what msgspec can decode from it, such as 1e400).
        raws = _raw_list_decoder.decode(text) if text[:1] == b"[" else [_raw_decoder.decode(text)]
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"frame is not valid JSON: {exc}") from None
    except RecursionError:
        raise ProtocolError(_TOO_DEEP) from None
    msgs: list[Inbound | Bad] = []
    for i, raw in enumerate(raws):
        try:
            msgs.append(_one_decoder.decode(raw))
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            msgs.append(_batch_by_item(raw, i) or _explain(raw, i, str(exc)))
        except RecursionError:
            msgs.append(_explain(raw, i, _TOO_DEEP))
    return msgs


class _LooseBatch(msgspec.Struct):
    """A batched message with its items not decoded yet: one bad item spoils only itself."""

    op: str
    items: list[msgspec.Raw] = msgspec.field(default_factory=list)
    ref: int | None = None


_loose_decoder = msgspec.json.Decoder(_LooseBatch)
_BATCH_TAGS: dict[str, Any] = {str(c.__struct_config__.tag): c for c in BATCHES}
_item_decoders = {c: msgspec.json.Decoder(kind) for c, kind in BATCHES.items()}


def _batch_by_item(raw: msgspec.Raw, index: int) -> Inbound | None:
    """A batched message whose items are decoded one by one, the bad ones as :class:`Bad`
    naming the item; None if it is not a batched message or is bad as a whole."""
    try:
        loose = _loose_decoder.decode(raw)
    except (msgspec.DecodeError, RecursionError):  # ValidationError is a DecodeError
        return None
    kind = _BATCH_TAGS.get(loose.op)
    if kind is None:
        return None
    decoder = _item_decoders[kind]
    items: list[Any] = []
    for j, item in enumerate(loose.items):
        try:
            items.append(decoder.decode(item))
        except (msgspec.DecodeError, RecursionError) as exc:
            why = _TOO_DEEP if isinstance(exc, RecursionError) else str(exc)
            where = f"message {index} ({loose.op}) item {j}"
            ref = _item_ref(item) if kind is not Pubs else None  # pubs: the batch's ref
            items.append(Bad(ProtocolError(f"{where}: {why}", index=j), ref))
    batch: Inbound = kind(items=items, ref=loose.ref)
    return batch


def _item_ref(raw: msgspec.Raw) -> int | None:
    try:
        return _field(_top_decoder.decode(raw), "ref", int)
    except (msgspec.DecodeError, RecursionError):
        return None


T = TypeVar("T")
_TOO_DEEP = "JSON nested too deeply (msgspec reads at most ~1000 levels)"
# Only a message's top level, its values left as they are: what names a bad message (its op
# and ref) is read even when some other field holds JSON msgspec cannot decode.
_top_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])


def _explain(raw: msgspec.Raw, index: int, why: str) -> Bad:
    where = f"message {index}"
    try:
        top = _top_decoder.decode(raw)
    except msgspec.ValidationError:
        return Bad(ProtocolError(f"{where}: a message must be a JSON object with an 'op'"))
    except (msgspec.DecodeError, RecursionError):
        return Bad(ProtocolError(f"{where}: {why}"))
    ref = _field(top, "ref", int)
    op = top.get("op")
    if op is None:
        return Bad(ProtocolError(f"{where}: missing field 'op'"), ref)
    name = _field(top, "op", str)
    if name is None:
        return Bad(ProtocolError(f"{where}: 'op' must be a string"), ref)
    if name not in OPS:
        return Bad(
            UnknownOperation(f"{where}: unknown op {name!r}; known ops: {', '.join(sorted(OPS))}"),
            ref,
        )
    return Bad(ProtocolError(f"{where} ({name}): {why}"), ref)


def _field(top: dict[str, msgspec.Raw], key: str, kind: type[T]) -> T | None:
    """``top[key]`` decoded as ``kind`` (strictly: ``true`` is no int), or None."""
    value = top.get(key)
    if value is None:
        return None
    try:
        return msgspec.json.decode(value, type=kind)
    except (msgspec.DecodeError, RecursionError):  # ValidationError is a DecodeError
        return None


def kept(raw: msgspec.Raw, what: str) -> Any:
    """A payload or result as the hub keeps it: ``None`` for ``null``, otherwise a copy of its
    JSON (a decoded ``Raw`` is a view that would keep its whole frame alive).

    It is still decoded once, and the objects dropped: JSON that msgspec reads as ``Raw`` but
    cannot decode (``1e400``) would otherwise be stored, and every later read of the task
    (and the restore after a restart) would fail on it.
    """
    if raw == NULL:
        return None
    try:
        _any_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"{what} cannot be read as JSON: {exc}") from None
    except RecursionError:
        raise ProtocolError(f"{what}: {_TOO_DEEP}") from None
    return raw.copy()


def plain(value: Any) -> Any:
    """``value`` with every ``Raw`` in it decoded, for code that looks inside a payload or
    result, and for pydantic (HTTP responses), which cannot encode ``Raw``."""
    if isinstance(value, msgspec.Raw):
        return _any_decoder.decode(value)
    if isinstance(value, (list, dict)):  # a group's results, a chain's state
        return _any_decoder.decode(encoder.encode(value))
    return value


def encode(msgs: list[dict[str, Any]]) -> bytes:
    """One frame: a single object when there is one message, else an array."""
    return encoder.encode(msgs[0] if len(msgs) == 1 else msgs)


def encode_batched(msgs: list[dict[str, Any]]) -> bytes:
    """One frame for a client that reads batched messages (its ``hello`` said ``batch``):
    as :func:`encode`, but consecutive ``offer`` messages go as one ``offers`` whose items
    are the offers without their ``op``.

    The offers are changed in place: the lifecycle makes each one for one connection
    (``Queues.offer_msg``), and nothing reads it once it is handed to be sent."""
    out: list[dict[str, Any]] = []
    run: list[dict[str, Any]] | None = None
    for msg in msgs:
        if msg.get("op") == "offer":
            if run is None:
                run = []
                out.append({"op": "offers", "items": run})
            del msg["op"]
            run.append(msg)
        else:
            run = None
            out.append(msg)
    if len(out) == len(msgs):  # no two offers in a row: nothing to gain
        for i, msg in enumerate(out):
            if msg.get("op") == "offers":
                msgs[i] = {"op": "offer", **msg["items"][0]}
        return encode(msgs)
    return encoder.encode(out[0] if len(out) == 1 else out)


def error_msg(err: Exception, ref: int | None = None, **extra: Any) -> dict[str, Any]:
    from taskhub.errors import TaskHubError

    body = (
        err.to_wire()
        if isinstance(err, TaskHubError)
        else {"code": "internal", "message": str(err)}
    )
    msg: dict[str, Any] = {"op": "error", **body, **extra}
    if ref is not None:
        msg["ref"] = ref
    return msg


def bounded_traceback(text: str) -> str:
    """A traceback cut to its last :data:`MAX_TRACEBACK` characters, saying so."""
    if len(text) <= MAX_TRACEBACK:
        return text
    return f"... ({len(text) - MAX_TRACEBACK} characters cut)\n{text[-MAX_TRACEBACK:]}"


def error_of(info: ErrorInfo) -> dict[str, Any]:
    """A ``fail``'s error as the hub stores it: type, message, and a bounded traceback."""
    err: dict[str, Any] = {"type": info.type, "message": info.message}
    if info.traceback:
        err["traceback"] = bounded_traceback(info.traceback)
    return err
