"""A small W3C WebDriver client for Debian's headless Chromium, on the standard library.

chromedriver (Debian's ``chromium-driver``, the same build as ``/usr/bin/chromium``) speaks
the W3C WebDriver protocol: JSON over HTTP on a loopback port. So driving the browser needs
no Python package and downloads nothing (Selenium's or Playwright's own driver and browser
managers are never involved):

    with Browser.start(tmp_path) as browser:      # skips the test where Chromium is missing
        browser.get("http://127.0.0.1:8000/")
        browser.find("#q").type("a dog on grass" + Keys.ENTER)
        png = browser.screenshot()                # PNG bytes of the viewport
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C key of an element reference
# what the browser must never do on its own: reach the network, update itself, sync
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-default-browser-check", "--disable-extensions", "--disable-dev-shm-usage",
                 "--no-proxy-server", "--mute-audio", "--hide-scrollbars", "--force-device-scale-factor=1",
                 "--window-size=1280,1000"]


class Keys:
    ENTER = "\ue007"
    ESCAPE = "\ue00c"
    ARROW_LEFT = "\ue012"
    ARROW_RIGHT = "\ue014"
    TAB = "\ue004"


def missing_reason() -> str | None:
    """Why the browser tests cannot run here, or None."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not path.is_file():
            return f"{path} not found: install Debian's {package} (apt-get install chromium chromium-driver)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebDriverError(RuntimeError):
    pass


class Element:
    def __init__(self, browser: Browser, ref: str):
        self.browser, self.ref = browser, ref

    def _call(self, method: str, tail: str, body: dict | None = None):
        return self.browser.call(method, f"/element/{self.ref}/{tail}", body)

    def type(self, text: str) -> None:
        self._call("POST", "value", {"text": text})

    def click(self) -> None:
        self._call("POST", "click", {})

    @property
    def text(self) -> str:
        return self._call("GET", "text")

    def rect(self) -> dict[str, float]:
        """x, y, width, height in CSS pixels of the page."""
        return self._call("GET", "rect")


class Browser:
    """One chromedriver process and one Chromium session; ends both on close."""

    def __init__(self, driver: subprocess.Popen, port: int, session: str, log: Path):
        self.driver, self.port, self.session, self.log = driver, port, session, log

    @classmethod
    def start(cls, workdir: Path, timeout: float = 60) -> Browser:
        port = free_port()
        log = workdir / "chromedriver.log"
        profile = workdir / "chromium-profile"  # a fresh profile for every run
        profile.mkdir(parents=True, exist_ok=False)
        driver = subprocess.Popen([str(CHROMEDRIVER), f"--port={port}", f"--log-path={log}"],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    if _request("GET", f"http://127.0.0.1:{port}/status", None, 5).get("ready"):
                        break
                except (OSError, WebDriverError):
                    pass
                if driver.poll() is not None or time.monotonic() > deadline:
                    raise WebDriverError(f"chromedriver did not start (see {log})")
                time.sleep(0.1)
            caps = {"capabilities": {"alwaysMatch": {
                "browserName": "chrome", "pageLoadStrategy": "normal",
                "goog:chromeOptions": {"binary": str(CHROMIUM),
                                       "args": [*CHROMIUM_ARGS, f"--user-data-dir={profile}"]}}}}
            session = _request("POST", f"http://127.0.0.1:{port}/session", caps, timeout)["sessionId"]
        except BaseException:
            driver.kill()
            driver.wait(timeout=30)
            raise
        return cls(driver, port, session, log)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.call("DELETE", "", None, timeout=30)
        except (OSError, WebDriverError):
            pass
        finally:
            self.driver.terminate()
            try:
                self.driver.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.driver.kill()
                self.driver.wait(timeout=30)

    def call(self, method: str, tail: str, body: dict | None = None, timeout: float = 120):
        url = f"http://127.0.0.1:{self.port}/session/{self.session}{tail}"
        return _request(method, url, body, timeout)

    # -- what the tests do ------------------------------------------------------------
    def get(self, url: str) -> None:
        self.call("POST", "/url", {"url": url})

    def find(self, css: str) -> Element:
        return Element(self, self.call("POST", "/element", {"using": "css selector", "value": css})[ELEMENT])

    def find_all(self, css: str) -> list[Element]:
        found = self.call("POST", "/elements", {"using": "css selector", "value": css})
        return [Element(self, e[ELEMENT]) for e in found]

    def script(self, source: str, *args):
        """Run ``source`` (a function body; ``arguments`` holds ``args``) and return its value."""
        return self.call("POST", "/execute/sync", {"script": source, "args": list(args)})

    def press(self, *keys: str) -> None:
        """Key presses sent to whatever has the focus."""
        actions = [a for k in keys for a in ({"type": "keyDown", "value": k}, {"type": "keyUp", "value": k})]
        self.call("POST", "/actions", {"actions": [{"type": "key", "id": "keyboard", "actions": actions}]})

    def wait_for(self, source: str, *args, timeout: float = 120, what: str = "the page"):
        """Poll the script ``source`` until it returns something truthy (a bounded wait)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.script(source, *args)
            if value:
                return value
            if time.monotonic() > deadline:
                raise WebDriverError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.2)

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("GET", "/screenshot"))


def _request(method: str, url: str, body: dict | None, timeout: float):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json; charset=utf-8"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
    try:
        with opener.open(req, timeout=timeout) as resp:
            payload = json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            value = json.loads(exc.read()).get("value", {})
        except ValueError:
            value = {}
        raise WebDriverError(f"{method} {url.split('/session/')[-1]}: {exc.code} "
                             f"{value.get('error', '')}: {str(value.get('message', ''))[:300]}") from None
    return payload.get("value", payload)

