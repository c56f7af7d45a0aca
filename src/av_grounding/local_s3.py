"""A throwaway S3-compatible endpoint on this machine: moto_server (from the `test` extra) in a
subprocess, for tests and benchmarks that need the real S3 API without credentials or network.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers_http(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=1).close()
    except urllib.error.HTTPError:
        return True  # an HTTP error status is still an answer
    except OSError:
        return False
    return True


@contextmanager
def moto_server(start_timeout_s: float = 30.0) -> Iterator[str]:
    """Run moto_server on a free loopback port; yields its endpoint URL. The server (its own
    process group) is stopped on exit, killed if it does not stop within 10 s."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + start_timeout_s
        while not answers_http(endpoint):
            if server.poll() is not None:
                raise RuntimeError(f"moto_server exited with status {server.returncode} before answering on {endpoint} "
                                   "(is moto[server] installed? it is in the `test` extra)")
            if time.monotonic() > deadline:
                raise RuntimeError(f"moto_server did not answer on {endpoint} within {start_timeout_s} s")
            time.sleep(0.1)
        yield endpoint
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
