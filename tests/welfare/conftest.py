"""Welfare fixtures: the browser fixtures of tests/browser (API in a thread, Chromium, World, sign_in)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

# Reuse the browser fixtures (API in a thread, Chromium, World, sign_in) without copying them.
_spec = importlib.util.spec_from_file_location(
    "welfare_browser_fixtures", Path(__file__).resolve().parents[1] / "browser" / "conftest.py"
)
assert _spec is not None and _spec.loader is not None
_browser = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _browser  # dataclasses look their module up
_spec.loader.exec_module(_browser)
browser = _browser.browser
api_url = _browser.api_url
world = _browser.world
sign_in = _browser.sign_in
World = _browser.World
PASSWORD = _browser.PASSWORD
