"""The dashboard in a real browser (Debian's chromium, driven by Playwright) during a real
surge of 20 nodes: the operator logs in with the token, watches the layers go through,
every node counted done, the charts drawn from the live stream. The screenshot is left in
the test's temporary directory (its path is printed)."""

from __future__ import annotations

import asyncio
import secrets
import shutil

import aiohttp
import pytest

from loadtest.harness import Progress, SurgeConfig, run_surge

KiB = 1024
NODES = 20
LAYERS = 2
# Only a bound on waiting, never a measurement: the machine may be shared and slow.
WAIT_MS = 180_000

ALL_DONE = """(nodes) => {
  const rows = [...document.querySelectorAll('#tasks tbody tr')];
  const done = (r) => r.querySelector('td.done').textContent === `${nodes}/${nodes}`;
  return rows.length === 3 && rows.every(done);
}"""


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium not found on PATH: scripts/bootstrap installs it")
    return path


async def test_an_operator_watches_a_surge_on_the_dashboard(tmp_path):
    from playwright.async_api import async_playwright

    token = secrets.token_hex(32)
    token_file = tmp_path / "ui-token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    config = SurgeConfig(
        nodes=NODES,
        image_size=1024 * KiB,
        layers=LAYERS,
        piece_size=32 * KiB,
        node_bandwidth=300e3,  # a few seconds of surge: the page sees it move
        registry_bandwidth=2e6,
        workers=2,
        supernode_args=("--ui-token-file", str(token_file)),
        tls=False,  # the browser would not trust the throwaway cluster CA
    )
    found: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def progress(state: Progress) -> None:
        if state.supernode and not found.done():
            found.set_result(state.supernode)

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(WAIT_MS)

            async def open_dashboard() -> str:
                url = await found
                await page.goto(f"{url}/ui/")
                await page.wait_for_selector("#login-form", state="visible")
                await page.fill("#token", "not-the-token-at-all")
                await page.click("#login-form button")
                await page.wait_for_selector("#login-error", state="visible")
                await page.fill("#token", token)
                await page.click("#login-form button")
                await page.wait_for_selector("#board", state="visible")
                return url

            watching = asyncio.create_task(open_dashboard())
            seen: dict[str, object] = {}

            async def before_stop(state: Progress) -> None:
                url = await watching
                shot = tmp_path / "dashboard.png"
                try:  # live: every layer reached 20/20 on the page while the nodes still run
                    await page.wait_for_function(ALL_DONE, arg=NODES)
                    await page.wait_for_function(
                        "() => Number(document.getElementById('chart-rates').dataset.points) >= 3"
                    )
                    await page.wait_for_function(
                        "(n) => document.querySelectorAll('#nodes tbody tr').length === n", arg=NODES
                    )
                finally:
                    await page.screenshot(path=str(shot), full_page=True)
                    print(f"dashboard screenshot: {shot}")
                seen["points"] = await page.eval_on_selector(
                    "#chart-rates polyline", "(line) => line.getAttribute('points').split(' ').length"
                )
                seen["saved"] = await page.text_content("#c-saved-note")
                seen["nodes"] = await page.text_content("#c-nodes")
                async with aiohttp.ClientSession() as session, session.get(f"{url}/ui/api/state") as resp:
                    seen["anonymous"] = resp.status  # the data needs the token

            try:
                (result,) = await run_surge(config, progress, before_stop)
            finally:
                watching.cancel()  # the surge may have failed before the page opened
        finally:
            await browser.close()

    assert (result.completed, result.failed) == (NODES, 0)
    assert seen["nodes"] == str(NODES)
    assert isinstance(seen["points"], int) and seen["points"] >= 3
    assert "did not come from the registry" in str(seen["saved"])
    assert seen["anonymous"] == 401
