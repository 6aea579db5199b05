"""The HTML report in a real browser: headless Chromium (Debian's ``chromium``) at a desktop
width (1400 px) and a phone's (420 px).

Each page is measured by a script run in the page: nothing may stick out of the viewport
(``document.documentElement.scrollWidth`` against ``innerWidth``, and every element's box), names
and ids stay on one line on a wide screen, rows become stacked cards on a phone, zero counts are
not painted in alarm colours, table headers are sticky and the filter box hides rows.
Screenshots of every page are kept in the test's tmp_path for a human to look at.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from apply_helpers import UNKNOWN_OS_VERSION, SandboxFactory, write_images
from browser import Browser, chromium_path
from click.testing import Result
from test_reports import scenario  # noqa: F401  (a fixture)

WIDTHS = (1400, 420)
#: A valid ims name of 120 characters (the limit the IMS lint warns about is 128).
LONG_NAME = "windows-server-2019-datacenter-" + "x" * 80 + "-edition"

PROBE = """(() => {
  const vw = window.innerWidth, out = {width: vw, overflow: [], wrapped: [], squeezed: [],
    alarm_zero: [], sticky: true};
  const root = document.documentElement;
  if (root.scrollWidth > vw) out.overflow.push(`page is ${root.scrollWidth}px wide`);
  const what = el => `<${el.tagName.toLowerCase()} class="${el.className}">` +
    el.textContent.trim().slice(0, 40);
  for (const el of document.body.querySelectorAll("*")) {
    const box = el.getBoundingClientRect();
    if (box.width === 0 || getComputedStyle(el).visibility === "hidden") continue;
    if (el.closest("thead")) continue;  // clipped away on a phone
    if (box.left < -0.5 || box.right > vw + 0.5)
      out.overflow.push(`${what(el)} spans ${Math.round(box.left)}..${Math.round(box.right)}`);
    if (el.scrollWidth > el.clientWidth + 1 && getComputedStyle(el).overflowX !== "visible")
      out.overflow.push(`${what(el)} hides ${el.scrollWidth - el.clientWidth}px`);
  }
  for (const el of document.querySelectorAll("td.name code:not(.long), td.id code"))
    if (el.getBoundingClientRect().width && el.getClientRects().length > 1)
      out.wrapped.push(el.textContent);
  for (const td of document.querySelectorAll("tbody td"))
    if (td.textContent.trim() && td.getBoundingClientRect().width &&
        td.getBoundingClientRect().width < 0.6 * td.closest("table").getBoundingClientRect().width)
      out.squeezed.push(what(td));
  for (const card of document.querySelectorAll(".card"))
    if (card.querySelector("b").textContent.trim() === "0") {
      const [r, g, b] = getComputedStyle(card.querySelector("b")).color.match(/\\d+/g).map(Number);
      if (r > 150 && g < 100) out.alarm_zero.push(card.textContent.trim());
    }
  for (const th of document.querySelectorAll("th"))
    if (getComputedStyle(th).position !== "sticky") out.sticky = false;
  return out;
})()"""

FILTER = """(() => {
  const box = document.getElementById("filter");
  box.value = %r;
  box.dispatchEvent(new Event("input"));
  return [...document.querySelectorAll("tbody tr")].filter(
    tr => getComputedStyle(tr).display !== "none").map(tr => tr.querySelector("code").textContent);
})()"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    path = chromium_path()
    if path is None:  # not a skip: `make test` must not skip tests, and .ci/run installs it
        pytest.fail("headless Chromium is needed: apt-get install -y chromium")
    b = Browser(path)
    yield b
    b.close()


@pytest.fixture
def apply_report(tmp_path: Path, sandbox: SandboxFactory,
                 run_cli: Callable[..., Result]) -> Path:
    """An apply report with created images, a long name and a failure with a long message."""
    names = [f"img-{i:03d}" for i in range(12)] + [LONG_NAME]
    catalog = write_images(tmp_path / "catalog", names,
                           overrides={"img-003": {"os_version": UNKNOWN_OS_VERSION}})
    sb = sandbox(token="t0k")
    result = run_cli(["apply", "--yes", "--endpoint", sb.url, "--state", tmp_path / "s.db",
                      "--catalog", catalog, "--format", "html", "-o", tmp_path / "apply.html"],
                     env={"OS_AUTH_TOKEN": "t0k"})
    assert result.exit_code == 1, result.output  # img-003 fails: the sandbox refuses its os
    return tmp_path / "apply.html"


@pytest.fixture
def plan_report(scenario: Path, write_catalog: Callable[..., Path],  # noqa: F811
                run_cli: Callable[..., Result]) -> Path:
    """The golden files' plan (every action), plus a long name and enough rows to filter."""
    write_catalog({"b.yaml": {"images": [
        {"name": n, "os_version": "Ubuntu 18.04 server 64bit", "min_disk": 40}
        for n in [LONG_NAME, *(f"ubuntu-18.04-variant-{i}" for i in range(10))]]}})
    result = run_cli(["plan", "--state", "state.db", "--format", "html", "-o", "plan.html"])
    assert result.exit_code == 0, result.output
    return scenario / "plan.html"


@pytest.fixture
def targets_report(tmp_path: Path, sandbox: SandboxFactory,
                   run_cli: Callable[..., Result]) -> Path:
    """An apply of a catalog with three targets, one of them unreachable (a long error)."""
    boxes = [sandbox(token="t0k"), sandbox(token="t0k")]
    catalog = write_images(tmp_path / "catalog", [f"img-{i:03d}" for i in range(12)])
    declared = "".join(f"  region-{i}: {{endpoint: '{sb.url}'}}\n" for i, sb in enumerate(boxes))
    (catalog / "targets.yaml").write_text(
        f"targets:\n{declared}  unreachable-region-with-a-long-name: "
        "{endpoint: 'http://127.0.0.1:9'}\n", encoding="utf-8")
    result = run_cli(["apply", "--yes", "--state", tmp_path / "s.db", "--catalog", catalog,
                      "--retries", "0", "--format", "html", "-o", tmp_path / "targets.html"],
                     env={"OS_AUTH_TOKEN": "t0k"})
    assert result.exit_code == 1, result.output  # the unreachable target fails alone
    return tmp_path / "targets.html"


def measure(browser: Browser, page: Path, width: int) -> dict[str, Any]:
    opened = browser.open_page(page, width)
    opened.screenshot(page.with_name(f"{page.stem}-{width}.png"))
    found = opened.evaluate(PROBE)
    assert isinstance(found, dict)
    # A phone zooms out to show a page wider than its screen: that is overflow too.
    assert found["width"] == width, f"the page needs {found['width']}px, not {width}px"
    return found


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("which", ["plan_report", "apply_report", "targets_report"])
def test_report_fits_the_screen(which: str, width: int, browser: Browser,
                                request: pytest.FixtureRequest) -> None:
    page: Path = request.getfixturevalue(which)
    found = measure(browser, page, width)
    assert found["overflow"] == [], f"content off-screen at {width}px"
    assert found["alarm_zero"] == [], "zero counts are shown in alarm colours"
    if width >= 720:
        assert found["wrapped"] == [], "names or ids wrap on a wide screen"
        assert found["sticky"], "table headers do not stick"
    else:  # a phone: each row a card, each cell as wide as the card
        assert found["squeezed"] == [], "table cells squeezed side by side on a phone"


def test_filter_box_hides_the_rows_that_do_not_match(plan_report: Path,
                                                     browser: Browser) -> None:
    page = browser.open_page(plan_report, 1400)
    assert page.evaluate(FILTER % "variant-3") == ["ubuntu-18.04-variant-3"]
    assert len(page.evaluate(FILTER % "")) > 10
