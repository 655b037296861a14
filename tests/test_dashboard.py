"""
The dashboard in a real headless browser (Debian's chromium, driven by
selenium through Debian's chromedriver), against a live proxy with traffic:
the numbers on the page are those of C{/status}, the charts of the history
have drawn points, a click on "drain" takes a server out of rotation and
the change is marked on the time line.  The test keeps a screenshot of the
page for a person to look at: C{dashboard.png} in C{$LBPROXY_SCREENSHOT_DIR},
or in trial's working directory (C{_trial_temp}); its path is printed.

Selenium's calls block, so they run in threads while the reactor serves the
page, the proxy and the backends.  Runs on CPython (scripts/test.sh installs
selenium there); the page itself is the same whatever runs the proxy.
"""

from __future__ import annotations

import http.client
import json
import os
from typing import Any, Callable, Dict, List

from twisted.internet import defer, reactor, task, threads
from twisted.web import server

from tests.support import (
    CLIENT_TIMEOUT,
    HOST,
    Backend,
    ProxyTestCase,
    proxy_config,
    refused_url,
    wait_until,
)

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
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1440,1000",
        "--lang=en-GB",
    ):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def varied_handler(backend: Backend, request: server.Request, body: bytes) -> object:
    """
    Answers as a real application would, more or less: some 404s and 500s,
    some slow answers, health checks passed at once.
    """
    path = request.path
    request.setHeader(b"Content-Type", b"text/plain")
    if path == b"/health":
        return b"ok\n"
    if path.startswith(b"/missing"):
        request.setResponseCode(404)
        return b"missing\n"
    if path.startswith(b"/broken"):
        request.setResponseCode(500)
        return b"broken\n"
    if path.startswith(b"/redirect"):
        request.setResponseCode(302)
        request.setHeader(b"Location", b"/")
        return b""
    if path.startswith(b"/slow"):

        def answer() -> None:
            if not request.finished and not request._disconnected:  # type: ignore[attr-defined]
                request.write(backend.name.encode() + b"\n")
                request.finish()

        reactor.callLater(0.03, answer)  # type: ignore[attr-defined]
        return server.NOT_DONE_YET
    return backend.name.encode() + b"\n"


def get_json(port: int, target: str) -> Any:
    conn = http.client.HTTPConnection(HOST, port, timeout=CLIENT_TIMEOUT)
    try:
        conn.request("GET", target)
        response = conn.getresponse()
        assert response.status == 200, (target, response.status)
        return json.loads(response.read())
    finally:
        conn.close()


#: Page cell -> how /status shows the same number.
CELLS: Dict[str, Callable[[Dict[str, Any]], str]] = {
    "url": lambda s: str(s["url"]),
    "state": lambda s: str(s["state"]),
    "inflight": lambda s: str(s["in_flight"]),
    "requests": lambda s: str(s["requests_served"]),
    "failures": lambda s: str(s["failed_attempts"]),
    "rps": lambda s: f"{s['requests_last_minute'] / 60:.2f}",
    "p50": lambda s: "–" if s["latency_ms"]["p50"] is None else str(s["latency_ms"]["p50"]),
    "p99": lambda s: "–" if s["latency_ms"]["p99"] is None else str(s["latency_ms"]["p99"]),
    "check": lambda s: s["last_health_check"] or "–",
}

#: JavaScript: the cells of every server row, by server and cell name.
READ_TABLE = """
const out = {};
for (const row of document.querySelectorAll('table[data-pool="test"] tr[data-server]')) {
  const cells = {};
  for (const td of row.querySelectorAll('td')) cells[td.classList[0]] = td.textContent;
  out[row.dataset.server] = cells;
}
return out;
"""

#: JavaScript: the drawn data points of each chart, by pool/server and kind.
COUNT_POINTS = """
const out = {};
for (const svg of document.querySelectorAll('svg.chart')) {
  let n = 0;
  for (const path of svg.querySelectorAll('path.data')) {
    n += (path.getAttribute('d').match(/[ML]-?[0-9.]+,-?[0-9.]+/g) || []).length;
  }
  out[(svg.dataset.server || '(pool)') + ' ' + svg.dataset.chart] = n;
}
return out;
"""


class DashboardBrowserTests(ProxyTestCase):
    @defer.inlineCallbacks
    def test_numbers_match_status_charts_draw_and_a_drain_is_marked(self):  # type: ignore[no-untyped-def]
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        a, b = self.backend("a", varied_handler), self.backend("b", varied_handler)
        text = proxy_config(
            [f"{a.url} name=a", f"{b.url} name=b", f"{refused_url()} name=c"],
            pool={
                "health_check": "GET /health",
                "health_interval": "1s",
                "health_timeout": "500ms",
                "health_fall": "1",
                "health_rise": "1",
                "retries": "2",
            },
        )
        text += f"[admin]\nlisten = tcp:0:interface={HOST}\n"
        proxy = self.start_proxy(text)
        assert proxy.admin_port is not None
        admin = proxy.admin_port.getHost().port
        url = f"http://{HOST}:{admin}/"

        driver = yield threads.deferToThread(start_browser)
        self.addCleanup(threads.deferToThread, driver.quit)

        def until(condition: Callable[[Any], Any]) -> defer.Deferred[Any]:
            return threads.deferToThread(
                lambda: WebDriverWait(driver, BROWSER_WAIT, poll_frequency=0.1).until(condition)
            )

        def table(d: Any) -> Dict[str, Dict[str, str]]:
            return d.execute_script(READ_TABLE)  # type: ignore[no-any-return]

        yield threads.deferToThread(driver.get, url)
        self.assertEqual(driver.title, "lbproxy")
        # The page shows every server; c, where nothing listens, goes DOWN.
        yield until(lambda d: table(d).get("a", {}).get("state") == "UP")
        yield wait_until(lambda: proxy.pools["test"].by_name["c"].state == "DOWN")

        # Traffic over a few seconds, of every status class, without a
        # reload of the page.
        targets = ["/", "/", "/", "/slow", "/missing", "/broken", "/redirect", "/"]
        for round in range(8):
            for target in targets * (1 + round % 3):
                yield self.fetch("GET", target)
            yield task.deferLater(reactor, 0.5, lambda: None)

        # The numbers on the page are those of /status (traffic has stopped,
        # so they stay put once the page has caught up).
        mismatch: List[str] = []

        def same_as_status(d: Any) -> bool:
            status = get_json(admin, "/status")
            page = table(d)
            mismatch[:] = []
            for s in status["pools"][0]["servers"]:
                for cell, expected in CELLS.items():
                    seen = page.get(s["name"], {}).get(cell)
                    if seen != expected(s):
                        mismatch.append(
                            f"{s['name']} {cell}: page {seen!r}, /status {expected(s)!r}"
                        )
            return not mismatch

        try:
            yield until(same_as_status)
        except Exception:
            self.fail("the page does not match /status: " + "; ".join(mismatch))
        page = yield threads.deferToThread(table, driver)
        self.assertGreater(int(page["a"]["requests"]), 20)
        self.assertEqual(page["c"]["state"], "DOWN")
        self.assertIn("ConnectionRefused", page["c"]["check"])

        # The charts of the pool and of each server that served have drawn points.
        def drawn(d: Any) -> bool:
            points = d.execute_script(COUNT_POINTS)
            return all(
                points.get(f"{who} {kind}", 0) > 0
                for who in ("(pool)", "a", "b")
                for kind in ("requests", "latency")
            )

        yield until(drawn)
        # Every status class shows in the pool's responses chart.
        classes = yield threads.deferToThread(
            driver.execute_script,
            "return [...document.querySelectorAll("
            "'svg[data-chart=requests]:not([data-server]) path.data')].map(p => p.dataset.class)",
        )
        self.assertEqual(sorted(classes), ["2xx", "3xx", "4xx", "5xx"])
        # /history adds up to /status once the last second of traffic is over.
        status = yield threads.deferToThread(get_json, admin, "/status")
        served = sum(s["requests_served"] for s in status["pools"][0]["servers"])
        counted: List[int] = []

        def history_counted(_: Any) -> bool:
            pool = get_json(admin, "/history")["pools"][0]
            counted[:] = [sum(sum(pool["series"][c]) for c in pool["series"] if "xx" in c)]
            return counted[0] == served

        try:
            yield until(history_counted)
        except Exception:
            self.fail(f"/history counts {counted}, /status {served}")
        history = yield threads.deferToThread(get_json, admin, "/history")
        pool_history = history["pools"][0]
        self.assertEqual(
            [e["event"] for e in pool_history["events"] if e["server"] == "c"], ["DOWN"]
        )

        # A click on b's drain button takes b out of rotation, and the change
        # is marked on the pool's time line and on b's own.
        def click(server_name: str, action: str) -> None:
            driver.find_element(
                By.CSS_SELECTOR, f'tr[data-server="{server_name}"] button[data-action="{action}"]'
            ).click()

        yield threads.deferToThread(click, "b", "drain")
        yield until(lambda d: table(d)["b"]["state"] == "DRAINING")
        self.assertEqual(proxy.pools["test"].by_name["b"].state, "DRAINING")
        proxied = [s for s in b.seen if s.uri != b"/health"]
        bodies = []
        for _ in range(10):
            response = yield self.fetch("GET", "/")
            bodies.append(response.body)
        self.assertEqual(bodies, [b"a\n"] * 10)
        self.assertEqual([s for s in b.seen if s.uri != b"/health"], proxied)
        for where in ("svg[data-chart=requests]:not([data-server])", 'svg[data-server="b"]'):
            yield until(
                lambda d, where=where: d.find_elements(
                    By.CSS_SELECTOR, f'{where} g.marker[data-event="drained"][data-server="b"]'
                )
            )
        yield until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "table.events tr[data-event=drained]")
        )

        # "enable" brings it back, marked too.
        yield threads.deferToThread(click, "b", "enable")
        yield wait_until(lambda: proxy.pools["test"].by_name["b"].state == "UP")
        yield until(lambda d: table(d)["b"]["state"] == "UP")
        yield until(lambda d: d.find_elements(By.CSS_SELECTOR, 'g.marker[data-event="enabled"]'))

        # The last minute, for a person to look at.
        path = yield threads.deferToThread(self._screenshot, driver)
        print(f"\ndashboard screenshot: {path}")
        with open(path, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
        self.assertGreater(os.path.getsize(path), 20_000)

    def _screenshot(self, driver: Any) -> str:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        driver.find_element(By.CSS_SELECTOR, 'button[data-range="60"]').click()
        for _ in range(2):
            # The whole page in the window, then a redraw (one a second) at that size.
            height = driver.execute_script("return document.documentElement.scrollHeight")
            inner = driver.execute_script("return window.innerHeight")
            outer = driver.get_window_size()["height"]
            driver.set_window_size(1440, min(int(height) + int(outer) - int(inner), 4000))
            seen = driver.execute_script("return document.body.dataset.updated")
            WebDriverWait(driver, BROWSER_WAIT, poll_frequency=0.1).until(
                lambda d, seen=seen: (
                    d.execute_script("return document.body.dataset.updated") != seen
                )
            )
        directory = os.environ.get("LBPROXY_SCREENSHOT_DIR") or os.getcwd()
        os.makedirs(directory, exist_ok=True)
        path = os.path.abspath(os.path.join(directory, "dashboard.png"))
        driver.save_screenshot(path)
        return path
