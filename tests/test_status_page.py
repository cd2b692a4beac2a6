"""
The status page in a real headless browser: Debian's ``chromium`` driven by
``chromium-driver`` through selenium (nothing downloaded at test time). ``.ci/run``
installs both when missing; elsewhere the test skips, saying why.

"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from trustp2p import Node

from .nodes import MakeNode
from .test_admin import Echo

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
    reason=f"the browser test needs {CHROMIUM} and {CHROMEDRIVER} "
    "(Debian: apt-get install chromium chromium-driver)",
)

FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,900",
]


@contextlib.contextmanager
def chromium(tmp_path: Path) -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def browse(url: str, peers: list[str], tmp_path: Path) -> Path:
    """Open the page, see a row per peer and a counter move; return the screenshot."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def rows(driver: Any) -> dict[str, Any]:
        found = driver.find_elements(By.CSS_SELECTOR, "#peers tbody tr[data-peer]")
        return {row.get_attribute("data-peer"): row for row in found}

    def packages_in(driver: Any) -> int:
        cell = driver.find_element(By.CSS_SELECTOR, f'tr[data-peer="{peers[0]}"] .packages-in')
        return int(cell.text)

    with chromium(tmp_path) as driver:
        driver.get(url)
        # A row the page redraws between finding and reading it is stale: read again
        # (CI130: StaleElementReferenceException, the page polls every second).
        wait = WebDriverWait(driver, 20, ignored_exceptions=(StaleElementReferenceException,))
        wait.until(lambda d: sorted(rows(d)) == sorted(peers))
        before = wait.until(lambda d: (packages_in(d),))[0]
        page_id = driver.execute_script("return window.performance.timeOrigin")
        wait.until(lambda d: packages_in(d) > before)  # the page polls: no reload
        assert driver.execute_script("return window.performance.timeOrigin") == page_id
        assert len(driver.find_elements(By.CSS_SELECTOR, "#graph circle[data-peer]")) == 2
        screenshot = tmp_path / "status-page.png"
        driver.save_screenshot(str(screenshot))
    return screenshot


async def test_the_status_page_shows_the_peers_live(make_node: MakeNode, tmp_path: Path) -> None:
    server = await make_node(server=True, threads=[Echo], admin="127.0.0.1:0")
    assert server.url is not None and server.admin_url is not None
    clients: list[Node] = []
    for _ in range(2):
        client = await make_node(client=True, peers=[server.url])
        assert client.client is not None
        await client.client.wait_connected()
        clients.append(client)

    async def chat() -> None:
        n = 0
        while True:
            for client in clients:
                assert client.client is not None
                await client.client.request(client.client.sockets[0], "echo", {"n": n})
            n += 1
            await asyncio.sleep(0.2)  # a request per client and per 200 ms: a live counter

    task = asyncio.create_task(chat())
    try:
        peer_ids = [client.peer_id for client in clients]
        assert None not in peer_ids
        screenshot = await asyncio.to_thread(
            browse, server.admin_url, [str(p) for p in peer_ids], tmp_path
        )
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert screenshot.stat().st_size > 0
    print(f"status page screenshot: {screenshot}")
