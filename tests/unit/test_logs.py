"""logs.py: levels from the environment, one line per record in text and JSON."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from taskhub import logs


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_levels_from_the_environment() -> None:
    assert logs.level_from_env({}) == logging.INFO
    assert logs.level_from_env({"TASKHUB_LOG": "debug"}) == logging.DEBUG
    assert logs.level_from_env({"TASKHUB_LOG": "WARNING"}) == logging.WARNING
    assert logs.level_from_env({"TASKHUB_LOG": "error"}) == logging.ERROR
    assert logs.level_from_env({"DEBUG": "taskhub:*"}) == logging.DEBUG  # seed 003's habit
    assert logs.level_from_env({"DEBUG": "other:*"}) == logging.INFO
    with pytest.raises(ValueError, match="TASKHUB_LOG"):
        logs.level_from_env({"TASKHUB_LOG": "loud"})


def test_text_lines_are_key_value_and_never_break(restore_root: None) -> None:
    out = io.StringIO()
    logs.setup(env={"TASKHUB_LOG": "debug"}, stream=out)
    log = logging.getLogger("taskhub.test")
    log.info("two\nlines", extra={"task": "01ABC", "action": "email:send"})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert "level=info logger=taskhub.test" in lines[0]
    assert 'msg="two\\nlines"' in lines[0]
    assert "task=01ABC action=email:send" in lines[0]
    assert "exc=" in lines[1] and "ValueError: boom" in lines[1]


def test_json_lines_parse(restore_root: None) -> None:
    out = io.StringIO()
    logs.setup("info", "json", stream=out)
    logging.getLogger("taskhub.test").warning("hello %s", "there", extra={"group": "g"})
    logging.getLogger("taskhub.test").debug("not shown")
    (line,) = out.getvalue().splitlines()
    rec = json.loads(line)
    assert rec["msg"] == "hello there"
    assert rec["level"] == "warning"
    assert rec["group"] == "g"
    assert rec["ts"].endswith("+00:00")


def test_bad_format_is_refused() -> None:
    with pytest.raises(ValueError, match="TASKHUB_LOG_FORMAT"):
        logs.setup(env={"TASKHUB_LOG_FORMAT": "xml"})
