"""Every surface that takes publish options agrees with the one table, taskhub/options_table.py
(issue 18, item 3): the Python clients' ``pub``/``schedule``/``sub`` and ``Worker.task``, the
wire structs, the hub's config keys, ``resolve_options``, the Node client's types and the docs'
table (the HTTP API's, as served: tests/integration/test_options_surfaces.py). Adding an option to
one place and not the others fails here."""

from __future__ import annotations

import datetime as dt
import inspect
import logging
import re
import types
import typing
from pathlib import Path
from typing import Any

import msgspec
import pytest

from taskhub import config, options_table, protocol, sync
from taskhub.client import Client
from taskhub.errors import InvalidOption
from taskhub.lifecycle import ACTION_OPTIONS, REQUEUE_OPTIONS, Defaults, resolve_options
from taskhub.options_table import (
    OPTION,
    PUB_OPTIONS,
    PubArgs,
    WorkerArgs,
    interval_strings,
    pub_options,
    worker_options,
)
from taskhub.worker import Worker

ROOT = Path(__file__).resolve().parents[2]
NAMES = [o.name for o in PUB_OPTIONS]
PUB = {o.name: o.pub for o in PUB_OPTIONS if o.pub is not None}
WORKER = {o.name: o.worker for o in PUB_OPTIONS if o.worker is not None}
CONFIG = {o.config: o for o in PUB_OPTIONS if o.config is not None}
NOW = 1_000_000.0
# A value of each option as a Python caller gives it to pub, and as the wire then carries it.
SAMPLES: dict[str, tuple[Any, Any]] = {
    "timeout": (None, None),
    "start_timeout": (7.5, 7.5),
    "priority": (3, 3),
    "key": ("k-1", "k-1"),
    "retries": (2, 2),
    "max_attempts": (4, 4),
    "delay": ("1m", 60.0),
    "at": (dt.datetime.fromtimestamp(NOW + 90, dt.UTC), NOW + 90),
    "once_every": (dt.timedelta(seconds=30), 30.0),
    "backoff": (0.5, 0.5),
    "backoff_max": (9.0, 9.0),
    "partition_key": ("p-1", "p-1"),
}


def kwargs_of(fn: Any, name: str) -> Any:
    """The TypedDict a function's ``**name`` is typed with (``**options: Unpack[PubArgs]``)."""
    params = inspect.signature(fn).parameters
    assert params[name].kind is inspect.Parameter.VAR_KEYWORD, fn
    hint = typing.get_type_hints(fn)[name]
    assert typing.get_origin(hint) is typing.Unpack, hint
    return typing.get_args(hint)[0]


# --- the Python surfaces ---------------------------------------------------------------------
def test_the_typed_keyword_arguments_are_the_table_s() -> None:
    assert typing.get_type_hints(PubArgs) == PUB
    assert typing.get_type_hints(WorkerArgs) == WORKER
    assert set(SAMPLES) == set(PUB)  # this test's samples cover every pub option


@pytest.mark.parametrize(
    ("fn", "name", "kind"),
    [
        (Client.pub, "options", PubArgs),
        (Client.schedule, "options", PubArgs),
        (sync.Client.pub, "options", PubArgs),
        (sync.Client.schedule, "options", PubArgs),
        (Client.sub, "defaults", WorkerArgs),
        (sync.Client.sub, "defaults", WorkerArgs),
        (Worker.task, "defaults", WorkerArgs),
    ],
    ids=lambda v: getattr(v, "__qualname__", str(v)),
)
def test_every_python_signature_takes_the_table_s_options(fn: Any, name: str, kind: Any) -> None:
    assert kwargs_of(fn, name) is kind
    # No option is also spelt out as a parameter of its own (a second declaration).
    assert not set(inspect.signature(fn).parameters) & set(NAMES)


def test_pub_options_builds_what_the_wire_struct_takes() -> None:
    given = {name: python for name, (python, _) in SAMPLES.items()}
    wire = pub_options(given)
    assert wire == {name: value for name, (_, value) in SAMPLES.items()}
    assert msgspec.to_builtins(msgspec.convert(wire, protocol.PubOptions)) == wire
    # Left out, or given the value that means "left out": not sent.
    assert pub_options({}) == {}
    assert pub_options({"priority": 0, "key": None, "delay": None, "at": None}) == {}
    with pytest.raises(TypeError, match="priorty"):
        pub_options({"priorty": 1})
    with pytest.raises(TypeError, match="trace"):
        pub_options({"trace": {}})  # the clients set it from the current span


def test_worker_options_builds_what_the_wire_struct_takes() -> None:
    given = {"timeout": "5m", "retries": 3, "max_attempts": 2, "backoff": "10s", "backoff_max": 60}
    wire = worker_options(given)
    assert wire == {"timeout": 300.0, "retries": 3, "max_attempts": 2, "backoff": 10.0} | {
        "backoff_max": 60.0
    }
    assert msgspec.to_builtins(msgspec.convert(wire, protocol.WorkerOptions)) == wire
    with pytest.raises(TypeError, match="priority"):
        worker_options({"priority": 1})
    with pytest.raises(InvalidOption, match="max_attempts"):
        worker_options({"max_attempts": 0})


# --- the wire, the HTTP API, the lifecycle ---------------------------------------------------
def test_the_wire_structs_have_the_table_s_fields() -> None:
    assert list(protocol.PubOptions.__struct_fields__) == NAMES
    assert set(protocol.WorkerOptions.__struct_fields__) == set(WORKER)
    assert set(protocol.WORKER_OPTIONS) == set(WORKER)
    # A field that defaults to UNSET ("the hub's default") is one the hub config defaults.
    defaults = dict(
        zip(
            protocol.PubOptions.__struct_fields__,
            protocol.PubOptions.__struct_defaults__,
            strict=True,
        )
    )
    unset = {name for name, value in defaults.items() if value is msgspec.UNSET}
    assert unset == {o.name for o in PUB_OPTIONS if o.config is not None}


def test_interval_strings_parses_the_options_that_take_intervals() -> None:
    raw = {"delay": "1h", "once_every": "2m", "timeout": 5, "key": "1h"}
    parsed = {"delay": 3600.0, "once_every": 120.0, "timeout": 5, "key": "1h"}
    assert interval_strings(raw) == parsed


def test_the_lifecycle_s_lists_are_the_table_s_columns() -> None:
    assert {o.name for o in PUB_OPTIONS if o.action} == ACTION_OPTIONS
    assert {o.name for o in PUB_OPTIONS if o.requeue} == set(REQUEUE_OPTIONS)
    assert {"key", "delay", "at", "once_every"}.isdisjoint(REQUEUE_OPTIONS)


def resolved(options: dict[str, Any], d: Defaults | None = None, action: str = "a:b") -> Any:
    struct = msgspec.convert(options, protocol.PubOptions) if options else None
    return resolve_options(struct, d or Defaults(), NOW, action)


def test_resolve_options_honours_every_option_a_task_sets() -> None:
    trace = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    wire = pub_options({name: python for name, (python, _) in SAMPLES.items()})
    # Where each option ends up in the stored options (delay and at: the time it is due).
    stored = {
        "delay": ("not_before", NOW + 60),
        "at": ("not_before", NOW + 90),
        "trace": ("trace", trace),
    }
    for opt in PUB_OPTIONS:
        value = trace if opt.name == "trace" else wire[opt.name]
        field, expected = stored.get(opt.name, (opt.name, value))
        if opt.name == "at":
            value = expected
        assert resolved({opt.name: value})[field] == expected, opt.name


def test_resolve_options_takes_the_hub_and_action_defaults_named_in_the_table() -> None:
    for opt in PUB_OPTIONS:
        if opt.server is not None:
            assert hasattr(Defaults(), opt.server), opt.server
    for name in ("timeout", "start_timeout", "retries", "max_attempts"):
        d = Defaults(**{OPTION[name].server: 9})  # type: ignore[arg-type]
        assert resolved({}, d)[name] == 9, name
    for name in ACTION_OPTIONS:
        d = Defaults(actions={"a:b": {name: 7}})
        assert resolved({}, d)[name] == 7, name


# --- the hub's config ------------------------------------------------------------------------
def test_the_config_keys_are_the_option_names_and_reach_the_hub_s_defaults(
    tmp_path: Path,
) -> None:
    assert set(CONFIG) <= set(config.SETTINGS)
    assert all(key == o.name for key, o in CONFIG.items())
    path = tmp_path / "hub.toml"
    lines = [f"{key} = {i + 2}" for i, key in enumerate(CONFIG)]
    path.write_text("[server]\nstore = 'memory://'\n" + "\n".join(lines) + "\n")
    server = config.load(path, env={})
    for i, (key, opt) in enumerate(CONFIG.items()):
        assert opt.server is not None
        assert getattr(server.defaults, opt.server) == i + 2, key


def test_the_old_config_keys_still_work_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert options_table.OLD_CONFIG_KEYS == {
        "task_start_timeout": "start_timeout",
        "task_end_timeout": "timeout",
        "retry_backoff": "backoff",
        "retry_backoff_max": "backoff_max",
    }
    path = tmp_path / "hub.toml"
    path.write_text("[server]\nstore = 'memory://'\ntask_end_timeout = 30\nretry_backoff = 2\n")
    env = {"TASKHUB_TASK_START_TIMEOUT": "4", "TASKHUB_RETRY_BACKOFF_MAX": "50"}
    with caplog.at_level(logging.WARNING, logger="taskhub.config"):
        server = config.load(path, env=env, retry_backoff_max=60)
    d = server.defaults
    assert (d.task_end_timeout, d.retry_backoff, d.task_start_timeout) == (30, 2, 4)
    assert d.retry_backoff_max == 60  # arguments over the environment, as before
    said = [r.getMessage() for r in caplog.records]
    for old, new in (
        ("[server] task_end_timeout", "[server] timeout"),
        ("[server] retry_backoff", "[server] backoff"),
        ("TASKHUB_TASK_START_TIMEOUT", "TASKHUB_START_TIMEOUT"),
        ("TASKHUB_RETRY_BACKOFF_MAX", "TASKHUB_BACKOFF_MAX"),
        ("load(retry_backoff_max=...)", "load(backoff_max=...)"),
    ):
        assert any(m.startswith(f"{old} is deprecated: use {new},") for m in said), (old, said)


def test_an_old_and_a_new_config_key_together_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "hub.toml"
    path.write_text("[server]\nstore = 'memory://'\ntask_end_timeout = 30\ntimeout = 20\n")
    with pytest.raises(InvalidOption, match=r"task_end_timeout and \[server\] timeout"):
        config.load(path, env={})
    # In different places, the later wins as for any key (here the environment).
    path.write_text("[server]\nstore = 'memory://'\ntask_end_timeout = 30\n")
    assert config.load(path, env={"TASKHUB_TIMEOUT": "20"}).defaults.task_end_timeout == 20


# --- the docs --------------------------------------------------------------------------------
BEGIN = "<!-- pub-options: generated from src/taskhub/options_table.py; checked by tests -->"
END = "<!-- /pub-options -->"


def type_text(tp: Any) -> str:
    args = typing.get_args(tp) if isinstance(tp, types.UnionType) else (tp,)
    return " or ".join("`None`" if a is type(None) else f"`{a.__name__}`" for a in args)


def docs_table() -> str:
    rows = [
        "| Option | Type (wire) | Python `pub` takes | Default | Also defaulted by | Meaning |",
        "|---|---|---|---|---|---|",
    ]
    for o in PUB_OPTIONS:
        by = (["the worker"] if o.worker is not None else []) + (
            ["`[[actions]]`"] if o.action else []
        )
        if o.config is not None:
            by.append(f"`[server] {o.config}`")
        py = type_text(o.pub) if o.pub is not None else "(set from the current span)"
        cells = [f"`{o.name}`", o.wire, py, o.default, ", ".join(by) or "—", o.meaning]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def test_the_docs_have_the_table_once_and_as_declared() -> None:
    text = (ROOT / "docs" / "protocol.md").read_text()
    assert text.count(BEGIN) == 1 and text.count(END) == 1
    table = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert table == docs_table(), "docs/protocol.md's table should be:\n" + docs_table()
    # No other table lists the options (pages link to this one). The config keys' table
    # (docs/operations.md, rows with their TASKHUB_ variables) is not one, and a table of other
    # things may have a row or two named like an option (the fail reason `timeout`).
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for page in pages:
        text = page.read_text()
        if BEGIN in text:
            text = text.split(BEGIN, 1)[0] + text.split(END, 1)[1]
        for table in re.findall(r"(?:^\|.*\n)+", text, re.M):
            rows = {
                name
                for line in table.splitlines()
                for name in NAMES
                if line.startswith(f"| `{name}` |") and "| `TASKHUB_" not in line
            }
            assert len(rows) < 3, (page.name, table)


def test_the_node_client_s_pub_options_are_the_table_s() -> None:
    # clients/js/index.d.ts: the same options, in JavaScript's camelCase.
    text = (ROOT / "clients" / "js" / "index.d.ts").read_text()
    body = text.split("export interface PubOptions {", 1)[1].split("\n}", 1)[0]
    names = set(re.findall(r"^\s+(\w+)\?:", body, re.M))
    camel = {re.sub(r"_(\w)", lambda m: m.group(1).upper(), name) for name in PUB}
    assert names == camel
