"""The namespaces helper (tests/netns.py): namespaces reach each other and
the host's bridge address, a loopback service through ``forward``, and
nothing once their link is cut."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading

from tests.netns import Network, forward, requires_netns

CONNECT = (
    "import socket, sys\n"
    "try:\n"
    "    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)\n"
    "    print(s.recv(16).decode())\n"
    "except OSError as exc:\n"
    "    print('failed', type(exc).__name__)\n"
)


def connect_from(net: Network, k: int, host: str, port: int) -> str:
    done = subprocess.run(
        [*net.exec(k), sys.executable, "-c", CONNECT, host, str(port)],
        capture_output=True,
        text=True,
        timeout=20,
    )
    return done.stdout.strip()


@requires_netns
def test_namespaces_reach_each_other_the_host_and_loopback_through_forward() -> None:
    loopback = socket.create_server(("127.0.0.1", 0))
    port = loopback.getsockname()[1]

    def answer() -> None:
        for _ in range(2):
            conn, _ = loopback.accept()
            conn.sendall(b"hello")
            conn.close()

    threading.Thread(target=answer, daemon=True).start()
    with Network(2) as net:
        server = subprocess.Popen(
            [
                *net.exec(1),
                sys.executable,
                "-c",
                "import socket; s = socket.create_server(('0.0.0.0', 9000));"
                " print('up', flush=True)\n"
                "while True:\n    c, _ = s.accept(); c.sendall(b'peer'); c.close()",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == "up"
            assert connect_from(net, 0, net.address(1), 9000) == "peer"
            with forward(net.host, ("127.0.0.1", port)) as relayed:
                assert connect_from(net, 0, net.host, relayed) == "hello"
                net.cut(0)
                assert connect_from(net, 0, net.host, relayed).startswith("failed")
                net.mend(0)
                assert connect_from(net, 0, net.host, relayed) == "hello"
            assert connect_from(net, 1, "127.0.0.1", port).startswith("failed")  # not the host's
        finally:
            server.kill()
            server.wait()
    loopback.close()
