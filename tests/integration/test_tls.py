"""TLS: a hub with tls_cert/tls_key serves wss:// and https:// (self-signed, made per test)."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import httpx
import pytest

from taskhub import Client
from taskhub.config import load
from taskhub.errors import ConnectionClosed, InvalidOption
from tests.conftest import ServerFactory

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-days", "2",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return str(cert), str(key)


def trusting(cert: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=cert)


async def test_round_trip_over_wss_and_healthz_over_https(
    make_server: ServerFactory, cert: tuple[str, str]
) -> None:
    server = await make_server(tls_cert=cert[0], tls_key=cert[1])
    assert server.url.startswith("wss://127.0.0.1:")
    assert server.http_url.startswith("https://")
    ctx = trusting(cert[0])
    async with (
        Client(server.url, name="worker", ssl=ctx) as worker,
        Client(server.url, name="pub", ssl=ctx) as pub,
    ):
        await worker.sub("echo:say", lambda t: {"echo": t.id})
        handle = pub.pub("echo:say", "hello")
        assert await handle.get_result(timeout=5) == {"echo": handle.id}
    async with httpx.AsyncClient(verify=ctx) as http:
        r = await http.get(f"{server.http_url}/healthz")
        assert r.status_code == 200
        assert r.json()["status"] == "ok"


async def test_a_client_that_does_not_trust_the_cert_is_refused(
    make_server: ServerFactory, cert: tuple[str, str]
) -> None:
    server = await make_server(tls_cert=cert[0], tls_key=cert[1])
    with pytest.raises(ConnectionClosed, match="CERTIFICATE_VERIFY_FAILED"):
        async with Client(
            server.url, name="x", ssl=ssl.create_default_context(), connect_timeout=1
        ):
            pass


async def test_tls_settings_are_checked(tmp_path: Path, cert: tuple[str, str]) -> None:
    with pytest.raises(InvalidOption, match="give both"):
        load(env={"TASKHUB_TLS_CERT": cert[0]})
    server = load(env={"TASKHUB_TLS_CERT": cert[0], "TASKHUB_TLS_KEY": cert[1]})
    assert server.url.startswith("wss://")
    bad = load(env={"TASKHUB_TLS_CERT": str(tmp_path / "none.pem"), "TASKHUB_TLS_KEY": cert[1]})
    with pytest.raises(InvalidOption, match="cannot load TLS certificate"):
        await bad.start()
