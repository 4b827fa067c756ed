"""`taskhub tasks` talks HTTP to the hub; pointed at something else, it says so in one line
instead of a traceback: a URL it cannot use, an answer that is not JSON, an error page."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.integration.test_cli import cli


class NotAHub(BaseHTTPRequestHandler):
    """A web server that is not TaskHub: an HTML page at /v1/tasks, a plain-text 502 else."""

    def do_GET(self) -> None:
        if self.path.startswith("/v1/tasks?") or self.path == "/v1/tasks":
            body, status, kind = b"<html>hello</html>", 200, "text/html"
        else:
            body, status, kind = b"upstream down", 502, "text/plain"
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet


@pytest.fixture
def not_a_hub() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), NotAHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


async def test_an_answer_that_is_not_json_is_named(not_a_hub: str) -> None:
    run = await cli("tasks", "ls", "--url", not_a_hub)
    line = run.one_error_line()
    assert "GET /tasks: the answer is not JSON" in line and f"is {not_a_hub} a TaskHub hub?" in line


async def test_an_error_page_is_shown_with_its_status(not_a_hub: str) -> None:
    run = await cli("tasks", "show", "t1", "--url", not_a_hub)
    assert "upstream down (502)" in run.one_error_line()


@pytest.mark.parametrize(
    ("url", "says"),
    [
        (
            "ftp://127.0.0.1:1",
            "--url 'ftp://127.0.0.1:1': expected ws://, wss://, http:// or https://",
        ),
        ("http://", "--url 'http://' has no host"),
    ],
)
async def test_a_url_the_cli_cannot_use_is_named(url: str, says: str) -> None:
    run = await cli("tasks", "ls", "--url", url)
    assert says in run.one_error_line()
