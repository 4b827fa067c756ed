"""The hub-to-hub link's frames (docs/deployment.md, "The hub-to-hub link").

A link is one WebSocket from a hub (the *origin*, which serves the clients) to the hub that
leads some of the partitions those clients reach (the *leader*). Every frame is a JSON array
of entries, each an array whose first item names its kind; one frame carries what all the
origin's connections had to send in one turn of its event loop, and likewise back. A
client's messages cross as the JSON msgspec encodes from the decoded message, its output as
the very frame its connection is sent (the origin writes it as it comes, without decoding it).
"""

from __future__ import annotations

from typing import Any

import msgspec

from taskhub import protocol as p
from taskhub.errors import FrameTooLarge, ProtocolError, TaskHubError, UnknownOperation, from_wire
from taskhub.lifecycle import Credentials
from taskhub.records import TaskRecord

LINK_PATH = "/v1/link"
# The deployment's link secret: a header on the link's handshake, a metadata entry of the
# deployment's root store (read by every hub at start).
SECRET_HEADER = "x-taskhub-link-secret"
FROM_HEADER = "x-taskhub-link-from"  # the origin's name, for the leader's log
SECRET_META = ("cluster", "link_secret")
CLOSE_REFUSED = 4403  # the leader refused the link: a wrong secret
CLOSE_MALFORMED = 4400  # a side sent a frame it could not read: a bug, or another version
# A frame is cut after the entry that takes it past this many bytes: a link frame is read
# whole, and the leader's WebSocket takes frames up to 4 x max_frame (1 MiB by default).
FRAME_BYTES = 512 * 1024


class _Entry(msgspec.Struct, array_like=True, tag_field="k"):
    pass


# --- origin -> leader --------------------------------------------------------------------------
class Open(_Entry, tag="open"):
    """A client connection reaches the leader for the first time: who it is (the origin
    authenticated it; the leader applies the same permissions) and what its hello said: who
    it is, whether it reads batched messages (``batch``) and takes its followed tasks' start
    events as ``starts`` messages (``starts``; a leader of an earlier version ignores it and
    sends each ``start`` event, which such a client still takes)."""

    conn: str
    name: str
    sub: tuple[str, ...]
    pub: tuple[str, ...]
    hello: dict[str, Any] | None = None
    batch: bool = False
    remote: str | None = None
    starts: bool = False


class In(_Entry, tag="in"):
    """One message of connection ``conn`` for the leader's partition ``part``."""

    conn: str
    part: int
    msg: msgspec.Raw


class WatchIn(_Entry, tag="watch"):
    """``watch`` (``on``) or ``unwatch`` of ``pattern`` in partition ``part``; partition 0,
    wherever it is, answers the client."""

    conn: str
    part: int
    pattern: str
    on: bool


class Detach(_Entry, tag="detach"):
    """Connection ``conn`` is gone: what it held on the leader goes back to its groups, a
    started delivery counting a try only when the connection was ``lost`` (not closed by the
    origin hub: a link that broke, a partition that moved, the hub stopping). A leader of an
    earlier version reads ``["detach", conn]`` and ignores the extra item."""

    conn: str
    lost: bool = True


class Find(_Entry, tag="find"):
    """A request: the freshest record of ``task`` in partition ``part``."""

    id: int
    part: int
    task: str


class ListTasks(_Entry, tag="list"):
    """A request: a page of partition ``part``'s stored tasks (``Store.list_tasks``)."""

    id: int
    part: int
    action: str | None
    state: str | None
    after: str | None
    limit: int


class Flush(_Entry, tag="flush"):
    """A request: answered once partition ``part`` has written and sent what it was given."""

    id: int
    part: int


class Items(_Entry, tag="items"):
    """A request: apply the items of connection ``conn``'s batched message ``msg`` that fall
    in partition ``part`` (``at``: their places in the client's batch, which the batch's
    ``ref`` answers); answered once stored, for ``pubs`` with the items' answers.

    With ``id`` :data:`NO_ANSWER` (a batch without ``ref``) it is no request: the items are
    applied at once, in order with the connection's other messages, and nothing is answered
    (each item's own answers and errors go to the connection). A leader of an earlier
    version answers it all the same, and the origin drops that answer."""

    id: int
    conn: str
    part: int
    msg: msgspec.Raw
    at: list[int]
    ref: int | None = None


NO_ANSWER = 0  # an Items "request" that wants no answer (requests are numbered from 1)


class Step(_Entry, tag="step"):
    """Publish a chain's step, with the id ``id`` made for partition ``part``, in that
    partition (the chain's hub publishes it; ``extra`` names the chain and the step)."""

    part: int
    id: str
    publisher: str
    action: str
    payload: Any
    options: p.PubOptions | None
    extra: dict[str, Any]


class StepEnded(_Entry, tag="ended"):
    """Step ``index`` of chain ``chain`` (held in partition ``part``) ended as ``rec`` says;
    either side sends it to the hub that leads the chain's partition."""

    part: int
    chain: str
    index: int
    rec: TaskRecord


class CancelStep(_Entry, tag="cancel_step"):
    """The chain of step ``task`` (in partition ``part``) failed: the step fails with
    ``error`` if it still runs."""

    part: int
    task: str
    error: dict[str, Any]


# --- leader -> origin --------------------------------------------------------------------------
class Out(_Entry, tag="out"):
    """A frame for connection ``conn``'s client, exactly as the client is sent it."""

    conn: str
    frame: msgspec.Raw


class Answer(_Entry, tag="answer"):
    """The answer to request ``id``: ``value`` (a task record, or null), or ``error``."""

    id: int
    value: msgspec.Raw = p.NULL
    error: str | None = None


class Close(_Entry, tag="close"):
    """The leader ends connection ``conn`` (it shuts down, the connection read too slowly,
    or it no longer leads a partition the connection reached): the origin closes the client
    with ``code``."""

    conn: str
    code: int
    reason: str = ""


# --- operations across hubs (origin -> leader) -------------------------------------------------
# The operator's listings and actions (group queues, dead letters, the dashboard's numbers) over
# every partition of the deployment, whichever hub is asked: the asking hub runs ``op`` itself
# on the partitions it leads and sends one request per other hub for the partitions that hub
# leads (docs/deployment.md, "The hub-to-hub link"; the ops are ``Admin.ops``).
class Ops(_Entry, tag="ops"):
    """A request: the operation ``op`` with ``args``, on behalf of the credential (``name``,
    its permissions ``sub`` and ``pub``), over the partitions ``parts`` this leader leads.
    Answered with :class:`Answer`: ``value`` is :func:`op_result` (the operation's result or
    its error, which the asking hub raises as its own); ``error`` says the leader could not
    run it (it no longer leads a partition, or it does not know ``op``)."""

    id: int
    op: str
    parts: list[int]
    name: str
    sub: tuple[str, ...]
    pub: tuple[str, ...]
    args: dict[str, Any] = {}


def op_result(value: Any = None, error: TaskHubError | None = None) -> bytes:
    """An :class:`Ops` answer's value: ``{"ok": value}`` or ``{"error": <wire error>}``."""
    return _encoder.encode({"error": error.to_wire()} if error is not None else {"ok": value})


def read_op_result(raw: msgspec.Raw | bytes) -> Any:
    """The result of an :class:`Ops` answer's value; its error raised (as the leader raised
    it: a 404 stays a 404 on the asking hub)."""
    body = msgspec.json.decode(raw)
    if not isinstance(body, dict) or ("ok" not in body and "error" not in body):
        raise ProtocolError("an operation's answer is neither ok nor an error")
    if "error" in body:
        raise from_wire(body["error"])
    return body["ok"]


# --- the HTTP API, schedules and pull consumers across hubs -------------------------------------
# What runs the lifecycle in process on the hub that took it (an HTTP publish or cancel, a
# schedule's slot, a pull consumer's lapsed lease) reaches a partition another hub leads as
# one of these (docs/decisions.md, "The HTTP API across hubs"). A request is answered with a
# :class:`Reply`, whose error keeps its code, so the HTTP answer is the one the leader would
# have given its own caller.
class Caller(msgspec.Struct, array_like=True):
    """The credentials the origin authenticated (the leader applies the same permissions)."""

    name: str
    sub: tuple[str, ...]
    pub: tuple[str, ...]


class PubItem(msgspec.Struct, array_like=True):
    """One task to publish: its action, payload and ``pub`` options as given (None: none),
    and what the hub adds to its options (``extra``: the dashboard's ``retried_from``)."""

    action: str
    payload: Any
    options: dict[str, Any] | None = None
    extra: dict[str, Any] | None = None


class Publish(_Entry, tag="publish"):
    """A request: publish ``items`` (all of partition ``part``) for ``caller``; answered once
    stored, with ``[record, created, stored]`` per item (``stored``: an earlier task a key
    found, read from the store)."""

    id: int
    part: int
    caller: Caller
    items: list[PubItem]


class CancelTask(_Entry, tag="cancel_task"):
    """A request: ``caller`` cancels ``task`` of partition ``part``; answered with its record
    once stored (``task_not_found``: not live there)."""

    id: int
    part: int
    caller: Caller
    task: str


class StartChain(_Entry, tag="start_chain"):
    """A request: ``caller`` starts a chain (``POST /add``) whose first step is of partition
    ``part``, held there; answered with its id once stored. ``steps``: ``{action, payload,
    options}`` as ``Hub.add_chain`` takes them."""

    id: int
    part: int
    caller: Caller
    steps: list[dict[str, Any]]
    merge_input: bool
    trace: dict[str, str] | None


class WaitTask(_Entry, tag="wait_task"):
    """A request: the record of ``task`` of partition ``part`` once it has ended (stored),
    or after ``wait`` seconds, or at once when the leader shuts down (an HTTP long poll)."""

    id: int
    part: int
    task: str
    wait: float


class TaskEvents(_Entry, tag="task_events"):
    """A request: the stored events of ``task`` (partition ``part``) after seq ``after``,
    waiting up to ``wait`` seconds for one while there are none and the task is live;
    answered ``[events, live]`` (an HTTP event stream, one request per step)."""

    id: int
    part: int
    task: str
    after: int
    wait: float


class Emit(_Entry, tag="emit"):
    """A request to partition 0's hub, which holds the topics: ``caller`` broadcasts ``data``
    on ``topic``; answered with how many connections it was queued for."""

    id: int
    caller: Caller
    topic: str
    data: Any


class Fire(_Entry, tag="fire"):
    """A request: a schedule's slot (kept by partition 0's hub) publishes its task in
    partition ``part`` as ``task`` (an id made from the schedule and the slot: a copy sent
    again publishes nothing more); answered once stored, with null, so the keeper records the
    slot as fired (hub/firing.py). Without ``id`` (a hub of an earlier version) it is not
    answered, and a task the leader cannot publish is an error in its log."""

    part: int
    owner: str
    action: str
    payload: Any
    options: dict[str, Any]
    extra: dict[str, Any]
    id: int | None = None
    task: str | None = None


class TakeBack(_Entry, tag="take_back"):
    """Connection ``conn`` (a pull consumer) gives delivery ``task``/``attempt`` back to its
    group: its lease lapsed (``count_try``) or the consumer stopped."""

    conn: str
    part: int
    task: str
    attempt: int
    reason: str
    count_try: bool


class Reply(_Entry, tag="reply"):
    """The answer to one of the requests above: ``value``, or ``error`` (its wire form:
    code, message, details)."""

    id: int
    value: msgspec.Raw = p.NULL
    error: dict[str, Any] | None = None


AcrossToLeader = Publish | CancelTask | StartChain | WaitTask | TaskEvents | Emit | Fire | TakeBack
INTERNAL = "internal"  # a Reply's error code: the request met a bug on the leader (logged there)
ACROSS = (Publish, CancelTask, StartChain, WaitTask, TaskEvents, Emit, Fire, TakeBack)


def caller_of(creds: Credentials) -> Caller:
    return Caller(creds.name, tuple(creds.sub_permissions), tuple(creds.pub_permissions))


def caller_creds(caller: Caller) -> Credentials:
    # max_connections is counted where the caller is, on the origin: none here.
    return Credentials(caller.name, caller.sub, caller.pub, None)


ToLeader = (
    Open
    | In
    | WatchIn
    | Detach
    | Find
    | ListTasks
    | Flush
    | Items
    | Step
    | StepEnded
    | CancelStep
    | Ops  # operations across hubs
) | AcrossToLeader
ToOrigin = Out | Answer | Close | StepEnded | Reply


def _enc_hook(obj: Any) -> Any:
    # An item of a batched message the origin could not decode (a Bad in its items): it
    # crosses as its error, and the leader reads the batch item by item (decode_msg).
    if isinstance(obj, ProtocolError):
        return obj.to_wire()
    raise NotImplementedError(f"cannot encode {type(obj).__name__} on a link")


_encoder = msgspec.json.Encoder(enc_hook=_enc_hook)
_to_leader = msgspec.json.Decoder(list[ToLeader])
_to_origin = msgspec.json.Decoder(list[ToOrigin])


def encode_entry(entry: _Entry) -> bytes:
    return _encoder.encode(entry)


def in_prefix(conn: str, part: int) -> bytes:
    """What an :class:`In` entry of ``conn`` for ``part`` starts with: the entry is this, the
    message's JSON and ``]`` (the busiest entries, joined without encoding them again)."""
    return b'["in",' + _encoder.encode(conn) + b",%d," % part


def out_prefix(conn: str) -> bytes:
    """What an :class:`Out` entry of ``conn`` starts with: then the frame, then ``]``."""
    return b'["out",' + _encoder.encode(conn) + b","


def frames(entries: list[bytes]) -> list[bytes]:
    """Encoded entries as link frames (JSON arrays) of about :data:`FRAME_BYTES` at most."""
    out: list[bytes] = []
    start, size = 0, 0
    for i, entry in enumerate(entries):
        size += len(entry) + 1
        if size >= FRAME_BYTES:
            out.append(b"[" + b",".join(entries[start : i + 1]) + b"]")
            start, size = i + 1, 0
    if start < len(entries):
        out.append(b"[" + b",".join(entries[start:]) + b"]")
    return out


def joined(frames: list[bytes]) -> bytes:
    """Frames for one client as one: the messages of each (an object, or an array of them),
    in order, in one array."""
    if len(frames) == 1:
        return frames[0]
    inner = [f[1:-1] if f[:1] == b"[" else f for f in frames]
    return b"[" + b",".join([m for m in inner if m]) + b"]"


def decode_to_leader(data: bytes | str) -> list[ToLeader]:
    """A frame from an origin; :class:`ProtocolError` naming what is wrong with it."""
    try:
        return _to_leader.decode(data)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ProtocolError(f"malformed link frame: {exc}") from None


def decode_to_origin(data: bytes | str) -> list[ToOrigin]:
    """A frame from a leader; :class:`ProtocolError` naming what is wrong with it."""
    try:
        return _to_origin.decode(data)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ProtocolError(f"malformed link frame: {exc}") from None


# A client message the origin could not decode crosses with its error, so the leader answers
# it exactly as it would have answered it from its own client.
class _BadMsg(msgspec.Struct, tag_field="op", tag="x-bad"):
    code: str
    message: str
    details: dict[str, Any] = {}
    ref: int | None = None


_inbound = msgspec.json.Decoder(p.Inbound | _BadMsg)


def encode_msg(msg: p.Inbound | p.Bad) -> bytes:
    """A client message as it crosses the link."""
    if isinstance(msg, p.Bad):
        wire = msg.error.to_wire()
        return _encoder.encode(
            _BadMsg(wire["code"], wire["message"], wire.get("details") or {}, msg.ref)
        )
    return _encoder.encode(msg)


def decode_msg(raw: msgspec.Raw) -> p.Inbound | p.Bad:
    """A client message from the link; :class:`ProtocolError` if it cannot be read."""
    try:
        msg: p.Inbound | _BadMsg = _inbound.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        # A batch with a bad item: each item on its own, a bad one with the origin's error.
        return _batch_by_item(raw) or p.decode_frame(bytes(raw))[0]
    if isinstance(msg, _BadMsg):
        kind = _PROTOCOL_ERRORS.get(msg.code, ProtocolError)
        return p.Bad(kind(msg.message, **msg.details), msg.ref)
    return msg


class _WireError(msgspec.Struct):
    code: str
    message: str
    details: dict[str, Any] = {}


class _BadItem(msgspec.Struct, forbid_unknown_fields=True):
    """An item of a batched message the origin could not decode, as :func:`_enc_hook` wrote
    it: its error, and its ``ref``."""

    error: _WireError
    ref: int | None = None


class _Loose(msgspec.Struct):
    op: str
    items: list[msgspec.Raw] = []
    ref: int | None = None


_loose = msgspec.json.Decoder(_Loose)
_bad_item = msgspec.json.Decoder(_BadItem)
_BATCH_KINDS: dict[str, Any] = {str(c.__struct_config__.tag): c for c in p.BATCHES}
_ITEMS = {c: msgspec.json.Decoder(kind) for c, kind in p.BATCHES.items()}


def _batch_by_item(raw: msgspec.Raw) -> p.Inbound | None:
    try:
        loose = _loose.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        return None
    kind = _BATCH_KINDS.get(loose.op)
    if kind is None:
        return None
    items: list[Any] = []
    for item in loose.items:
        try:
            items.append(_ITEMS[kind].decode(item))
        except (msgspec.DecodeError, RecursionError):
            try:
                bad = _bad_item.decode(item)
            except (msgspec.DecodeError, RecursionError):
                return None
            error = _PROTOCOL_ERRORS.get(bad.error.code, ProtocolError)
            items.append(p.Bad(error(bad.error.message, **bad.error.details), bad.ref))
    batch: p.Inbound = kind(items=items, ref=loose.ref)
    return batch


_PROTOCOL_ERRORS: dict[str, type[ProtocolError]] = {
    c.code: c for c in (ProtocolError, FrameTooLarge, UnknownOperation)
}


def credentials(entry: Open) -> Credentials:
    # max_connections is counted where the connection is, on the origin: none here.
    return Credentials(entry.name, entry.sub, entry.pub, None)


def link_url(base: str) -> str:
    """The link's WebSocket URL at a hub whose base URL (http(s) or ws(s)) is ``base``."""
    base = base.rstrip("/")
    for plain, ws in (("http://", "ws://"), ("https://", "wss://")):
        if base.startswith(plain):
            base = ws + base[len(plain) :]
    return base + LINK_PATH
