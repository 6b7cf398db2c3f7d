"""Shared pieces of the browser tests: the gateway handle and screenshots."""

from __future__ import annotations

import shutil
from pathlib import Path

from playwright.sync_api import Page

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts" / "browser"
DOC_IMAGES = ROOT / "docs" / "images"


class Gateway:
    def __init__(self, port: int) -> None:
        self.port = port

    def url(self, path: str = "/", host: str = "wiki.localhost") -> str:
        return f"https://{host}:{self.port}{path}"


def shot(page: Page, name: str, *, doc: str = "") -> None:
    """Save the page as tests/artifacts/browser/<name>.png (and docs/images/<doc>.png)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if doc:
        DOC_IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOC_IMAGES / f"{doc}.png")
