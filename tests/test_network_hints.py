"""Network errors fail fast and say which setting to check: nothing listening (before the
endpoint ever answered), a TLS client against a plain-HTTP port, an unknown host, and a 404 at
the listing (not the Image API's root)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from apply_helpers import SandboxFactory, write_images
from click.testing import Result

from reconciler.clock import ManualClock

TOKEN = {"OS_AUTH_TOKEN": "t0k"}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def not_an_image_api() -> Iterator[str]:
    """A plain HTTP server that answers 404 to everything (a wrong URL)."""
    class NotFound(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(404)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(b"404 page not found")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def plan(run_cli: Callable[..., Result], endpoint: str) -> Result:
    return run_cli(["plan", "--refresh", "--endpoint", endpoint], env=TOKEN)


def test_nothing_listening_fails_at_once_and_names_the_setting(
        tmp_path: Path, run_cli: Callable[..., Result], fixed_clock: ManualClock) -> None:
    write_images(tmp_path / "catalog", ["img-000"])
    result = plan(run_cli, f"http://127.0.0.1:{closed_port()}")
    assert result.exit_code == 1
    assert "nothing listens at that address: check --endpoint (RECONCILE_ENDPOINT)" in \
        result.stderr
    assert fixed_clock.sleeps == []  # not retried: this endpoint never answered
    assert "Traceback" not in result.output


def test_tls_against_a_plain_http_port_is_not_retried(
        tmp_path: Path, sandbox: SandboxFactory, run_cli: Callable[..., Result],
        fixed_clock: ManualClock) -> None:
    write_images(tmp_path / "catalog", ["img-000"])
    sb = sandbox(token="t0k")
    result = plan(run_cli, sb.url.replace("http://", "https://"))
    assert result.exit_code == 1
    assert "does not speak TLS there: is the endpoint http://, not https://?" in result.stderr
    assert fixed_clock.sleeps == []
    assert sum(sb.request_count.values()) == 0


def test_unknown_host_is_not_retried(tmp_path: Path, run_cli: Callable[..., Result],
                                     fixed_clock: ManualClock) -> None:
    write_images(tmp_path / "catalog", ["img-000"])
    result = plan(run_cli, "http://no-such-host.invalid:9292")
    assert result.exit_code == 1
    assert "check --endpoint (RECONCILE_ENDPOINT)" in result.stderr
    assert fixed_clock.sleeps == []


def test_404_at_the_listing_asks_whether_this_is_the_image_api(
        tmp_path: Path, run_cli: Callable[..., Result], not_an_image_api: str) -> None:
    write_images(tmp_path / "catalog", ["img-000"])
    result = plan(run_cli, not_an_image_api)
    assert result.exit_code == 1
    assert f"is {not_an_image_api} the Image API endpoint? Check --endpoint" in result.stderr


def test_a_server_that_answered_once_is_still_retried(
        tmp_path: Path, sandbox: SandboxFactory, run_cli: Callable[..., Result],
        fixed_clock: ManualClock) -> None:
    write_images(tmp_path / "catalog", ["img-000"])
    sb = sandbox(token="t0k", throttle_rate=1.0, seed=1)
    result = plan(run_cli, sb.url)
    assert result.exit_code == 1
    assert len(fixed_clock.sleeps) == 5  # 429s: retried with backoff, then given up
