"""A real headless Chromium for browser tests: Debian's `chromium`, driven by Playwright for
Python (Playwright's own browser download is not needed)."""

from __future__ import annotations

import os
import shutil

# Headless and quiet: no sandbox (tests may run as root), no GPU, no calls home.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def chromium_path() -> str | None:
    """The Chromium binary: $CHROMIUM, else `chromium` on the PATH (Debian: /usr/bin)."""
    if path := os.environ.get("CHROMIUM"):
        return path if os.access(path, os.X_OK) else None
    return shutil.which("chromium") or shutil.which("chromium-browser")
