"""A process of `taskhub serve --processes` (taskhub.processes.SharedPort): it listens on the
socket its parent bound and on a port of its own, and advertises its own port on the
advertised host (the shared port cannot name one process)."""

from __future__ import annotations

import os
import socket

from taskhub.processes import SharedPort


def test_a_child_listens_on_the_shared_socket_and_advertises_its_own_port() -> None:
    parent = socket.create_server(("127.0.0.1", 0))
    share = SharedPort(os.dup(parent.fileno()))
    try:
        assert share.port == parent.getsockname()[1]
        shared, own = share.sockets("127.0.0.1")
        assert shared.getsockname() == parent.getsockname()
        mine = own.getsockname()[1]
        assert mine != share.port
        assert share.advertised("http://127.0.0.1:8080") == f"http://127.0.0.1:{mine}"
        assert share.advertised("https://hub.example:8443/base") == f"https://hub.example:{mine}"
        assert share.advertised("http://[::1]:8080") == f"http://[::1]:{mine}"
    finally:
        for sock in (parent, share.shared, share.own):
            if sock is not None:
                sock.close()
