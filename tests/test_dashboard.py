"""
The dashboard in a real headless browser (Debian's chromium, driven by
selenium through Debian's chromedriver): the page loads, its numbers move
under traffic, and a click on "drain" takes a server out of rotation.

Selenium's calls block, so they run in threads while the reactor serves the
page, the proxy and the backends.  Runs on CPython (scripts/test.sh installs
selenium there); the page itself is the same whatever runs the proxy.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from twisted.internet import defer, threads

from tests.support import HOST, ProxyTestCase, proxy_config, wait_until

CHROMIUM = os.environ.get("LBPROXY_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("LBPROXY_CHROMEDRIVER", "/usr/bin/chromedriver")

#: Seconds the browser may take to show what the test waits for.
BROWSER_WAIT = 20


def start_browser() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.path.exists(path):
            raise AssertionError(f"{path} is missing: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


class DashboardBrowserTests(ProxyTestCase):
    @defer.inlineCallbacks
    def test_page_loads_numbers_move_and_a_click_drains_a_server(self):  # type: ignore[no-untyped-def]
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        a, b = self.backend("a"), self.backend("b")
        text = proxy_config([f"{a.url} name=a", f"{b.url} name=b"])
        text += f"[admin]\nlisten = tcp:0:interface={HOST}\n"
        proxy = self.start_proxy(text)
        assert proxy.admin_port is not None
        url = f"http://{HOST}:{proxy.admin_port.getHost().port}/"

        driver = yield threads.deferToThread(start_browser)
        self.addCleanup(threads.deferToThread, driver.quit)

        def until(condition: Callable[[Any], Any]) -> defer.Deferred[Any]:
            return threads.deferToThread(
                lambda: WebDriverWait(driver, BROWSER_WAIT, poll_frequency=0.1).until(condition)
            )

        def cell(server: str, name: str) -> Callable[[Any], str]:
            def read(d: Any) -> str:
                return str(
                    d.execute_script(
                        "const e = document.querySelector(arguments[0]);"
                        "return e ? e.textContent : '';",
                        f'tr[data-server="{server}"] td.{name}',
                    )
                )

            return read

        yield threads.deferToThread(driver.get, url)
        # The page shows both servers, UP.
        yield until(lambda d: cell("a", "state")(d) == "UP" and cell("b", "state")(d) == "UP")
        self.assertEqual(driver.title, "lbproxy")
        before = int((yield threads.deferToThread(cell("a", "requests"), driver)))

        # Under traffic the numbers move without a reload of the page.
        for _ in range(20):
            yield self.fetch("GET", "/")
        yield until(lambda d: int(cell("a", "requests")(d) or 0) >= before + 10)
        yield until(lambda d: cell("a", "rps")(d) not in ("", "–", "0.0"))
        yield until(lambda d: cell("a", "p50")(d) not in ("", "–"))
        # The sparkline draws once there are two latency samples.
        yield until(
            lambda d: d.find_elements(By.CSS_SELECTOR, 'tr[data-server="a"] svg.sparkline polyline')
        )

        # A click on b's drain button takes b out of rotation.
        def click_drain() -> None:
            button = driver.find_element(
                By.CSS_SELECTOR, 'tr[data-server="b"] button[data-action="drain"]'
            )
            button.click()

        yield threads.deferToThread(click_drain)
        yield until(lambda d: cell("b", "state")(d) == "DRAINING")
        self.assertEqual(proxy.pools["test"].by_name["b"].state, "DRAINING")
        seen_by_b = len(b.seen)
        bodies = []
        for _ in range(10):
            response = yield self.fetch("GET", "/")
            bodies.append(response.body)
        self.assertEqual(bodies, [b"a\n"] * 10)
        self.assertEqual(len(b.seen), seen_by_b)

        # And "enable" brings it back.
        def click_enable() -> None:
            driver.find_element(
                By.CSS_SELECTOR, 'tr[data-server="b"] button[data-action="enable"]'
            ).click()

        yield threads.deferToThread(click_enable)
        yield wait_until(lambda: proxy.pools["test"].by_name["b"].state == "UP")
        yield until(lambda d: cell("b", "state")(d) == "UP")
