"""Finding a create whose answer was lost costs one request, however many images the cloud has.

The look-up asks the server for the name and the marker (``GET /v2/images?name=…&
reconcile_marker=…``) instead of listing the project and searching it: against a cloud of
100,000 images that is one request instead of a hundred pages.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from apply_helpers import SandboxFactory, recorded, write_images
from click.testing import Result

ENV = {"OS_AUTH_TOKEN": "tok-test-0001"}


def test_a_lost_answer_is_looked_up_with_one_request(
        tmp_path: Path, run_cli: Callable[..., Result], sandbox: SandboxFactory) -> None:
    sb = sandbox(drop_response_rate=1.0, seed=1)  # every create lands, its answer is lost
    for i in range(2_500):  # more than two pages of 1,000 other images
        sb.add_image({"name": f"other-{i:04d}", "visibility": "private"})
    catalog = write_images(tmp_path / "catalog", ["wanted"])
    state = tmp_path / "state.db"
    before = sb.request_count.copy()
    result = run_cli(["apply", "--yes", "--no-refresh", "--endpoint", sb.url, "--state", state,
                      "--catalog", catalog], env=ENV)
    assert result.exit_code == 0, result.output
    sent = sb.request_count - before
    assert sent[("POST", "images")] == 1
    assert sent[("GET", "images")] == 1  # the look-up by name and marker: no listing
    assert sent[("GET", "image")] == 0
    assert recorded(state)["wanted"]["image_id"] == next(
        i["id"] for i in sb.images() if i["name"] == "wanted")
