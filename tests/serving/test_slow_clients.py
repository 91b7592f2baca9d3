"""A client that declares a body and never sends it is answered 408 and let go."""

from __future__ import annotations

import socket
import time

import httpx
import pytest


@pytest.mark.reliability("fault", "half-open request: 408 after the body timeout")
def test_a_half_open_request_gets_a_408_after_the_body_timeout(
    bundle_dirs, registry, start_service
) -> None:
    service = start_service(
        str(bundle_dirs["v1"]), tracking_uri=registry.uri, extra=("--body-timeout", "1")
    )
    service.wait_ready()
    with socket.create_connection(("127.0.0.1", service.port), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/retrieve HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n" + b'{"user_id": '  # ... and nothing more
        )
        started = time.monotonic()
        answer = b""
        while b"\r\n\r\n" not in answer or b"}" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
        waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"not received within 1 s" in answer
    assert waited < 20
    healthy = httpx.post(f"{service.url}/v1/retrieve", json={"user_id": 1, "k": 3}, timeout=10)
    assert healthy.status_code in (200, 404)  # the service goes on answering others
