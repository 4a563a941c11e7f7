"""Headless Chromium driven over the DevTools protocol, with the standard library only.

``--remote-debugging-pipe`` makes Chromium read protocol commands from fd 3 and write replies to
fd 4 (JSON, each message ended by a NUL byte), so no websocket client is needed. Used by
``scripts/screenshots.py``: open a page of the Prefect UI, wait until the page says it is ready and
two screenshots in a row are identical (the single-page app has fetched and drawn everything,
the canvas of the run graph included), then save the full page as PNG.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader", "--disable-quic",
         "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--mute-audio"]
WIDTH, HEIGHT = 1600, 1200
MAX_HEIGHT = 8000


class ChromiumError(RuntimeError):
    """Chromium did not start, answer, or show the page in time."""


class Chromium:
    """``with Chromium() as browser: browser.screenshot(url, file, ready=JS)``; the process is ours, stopped by pid."""

    def __init__(self, binary: str = "chromium") -> None:
        self.binary = shutil.which(binary) or binary
        self.profile = Path(tempfile.mkdtemp(prefix="stashflow-chromium-"))
        self.buffer = b""
        self.next_id = 0
        self.session = ""

    def __enter__(self) -> Chromium:
        to_child, self.commands = os.pipe()      # we write commands, Chromium reads them on fd 3
        self.replies, from_child = os.pipe()     # Chromium writes replies on fd 4, we read them

        def fds() -> None:
            high_in, high_out = os.dup(to_child), os.dup(from_child)
            os.dup2(high_in, 3)
            os.dup2(high_out, 4)

        self.log = open(self.profile / "chromium.log", "w")
        self.process = subprocess.Popen(
            [self.binary, *FLAGS, f"--user-data-dir={self.profile / 'profile'}", f"--window-size={WIDTH},{HEIGHT}",
             "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=fds, pass_fds=(3, 4),
            start_new_session=True)
        os.close(to_child)
        os.close(from_child)
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Page.enable")
        self.call("Runtime.enable")
        self.viewport(HEIGHT)
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):  # already closed
            os.close(self.commands)
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self.replies)
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    # ------------------------------------------------------------------ the protocol

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command (on the page's session once attached) and return its result."""
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self.commands, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise ChromiumError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})

    def _read(self) -> dict[str, Any]:
        while b"\0" not in self.buffer:
            chunk = os.read(self.replies, 1 << 20)
            if not chunk:
                raise ChromiumError(f"chromium exited (log: {self.profile / 'chromium.log'})")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            return None
        return result.get("result", {}).get("value")

    def viewport(self, height: int, width: int = WIDTH) -> None:
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    # ------------------------------------------------------------------ pages

    def screenshot(self, url: str, file: Path, *, ready: str = "true", timeout: float = 60.0,
                   full_page: bool = True, width: int = WIDTH) -> bool:
        """Open ``url`` in a ``width`` pixels wide window, wait for the JS expression ``ready`` and a
        settled page, save a PNG (the whole page's height with ``full_page``). Returns False when the
        page did not settle within ``timeout`` (the last picture is saved anyway, to be looked at).
        """
        self.viewport(HEIGHT, width)
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        while not self.evaluate(f"Boolean({ready})"):
            if time.monotonic() > deadline:
                self._save(file, self._shot())
                return False
            time.sleep(0.25)
        settled, previous = False, b""
        while time.monotonic() < deadline:
            if full_page:
                height = self.evaluate("Math.max(document.documentElement.scrollHeight, document.body.scrollHeight,"
                                       " ...[...document.querySelectorAll('*')].filter(e => e.scrollHeight >"
                                       " e.clientHeight + 4 && getComputedStyle(e).overflowY !== 'visible')"
                                       ".map(e => e.scrollHeight - e.clientHeight + innerHeight))") or HEIGHT
                self.viewport(min(max(int(height), HEIGHT), MAX_HEIGHT), width)
            shot = self._shot()
            if shot == previous:
                settled = True
                break
            previous = shot
            time.sleep(0.75)
        self._save(file, previous)
        return settled

    def _shot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])

    @staticmethod
    def _save(file: Path, png: bytes) -> None:
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(png)
