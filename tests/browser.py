"""Open a page in real headless Chromium (Debian's /usr/bin/chromium) and report what a person would see.

Playwright drives the system browser through `executable_path`, so no browser download is
needed; `.ci/run` installs the `chromium` package.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class PageCheck:
    title: str
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)  # id, natural width/height of every <img>
    tables: dict[str, int] = field(default_factory=dict)  # table id -> rows


def open_page(path: Path, screenshot: Path | None = None) -> PageCheck:
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    if executable is None:
        raise RuntimeError("chromium is not installed: apt-get install chromium (.ci/run does this)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            check = PageCheck(title="")
            page.on("console", lambda msg: check.console_errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: check.page_errors.append(str(exc)))
            page.goto(path.resolve().as_uri(), wait_until="load")
            check.title = page.title()
            check.images = page.eval_on_selector_all(
                "img", "els => els.map(e => ({id: e.id, width: e.naturalWidth, height: e.naturalHeight, complete: e.complete}))"
            )
            check.tables = dict(page.evaluate(
                "() => Array.from(document.querySelectorAll('table[id]')).map(t => [t.id, t.rows.length])"
            ))
            if screenshot is not None:
                page.screenshot(path=str(screenshot), full_page=True)
            return check
        finally:
            browser.close()
