"""A real browser for the viewer tests: Debian's headless Chromium, a fake camera, Selenium.

Chromium's fake capture device plays a Y4M file as the camera, so the page's
`getUserMedia` gets frames made from test scenes; `--use-fake-ui-for-media-stream`
answers the permission prompt with "allow", as a user would.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from PIL import Image

from tests.support.images import photo

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# What keeps Chromium off the network it has no business with (it would retry, loudly).
QUIET = (
    "--headless=new",
    "--no-sandbox",  # as root in CI
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


def require_chromium() -> None:
    """Skip where Debian's chromium and chromium-driver are missing (`./dev setup` installs them)."""
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.skip("needs Debian's chromium and chromium-driver (./dev setup installs them)")


def write_y4m(path: Path, frames: int = 12, size: tuple[int, int] = (1280, 720), fps: int = 10) -> Path:
    """A short camera clip of test scenes (Chromium loops it): YUV 4:2:0, as cameras give."""
    width, height = size
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for index in range(frames):
            ycbcr = photo(width, height, seed=100 + index).convert("YCbCr")
            y, cb, cr = ycbcr.split()
            half = (width // 2, height // 2)
            out.write(b"FRAME\n")
            out.write(y.tobytes())
            out.write(cb.resize(half, Image.Resampling.BILINEAR).tobytes())
            out.write(cr.resize(half, Image.Resampling.BILINEAR).tobytes())
    return path


CERTUTIL = "/usr/bin/certutil"


def trusting_home(home: Path, root: Path) -> Path:
    """A home whose NSS database (~/.pki/nssdb, where Chromium on Linux keeps the roots a user
    added) trusts `root` to identify websites, as a user's certificate settings would."""
    if not shutil.which(CERTUTIL):
        pytest.skip("needs certutil (Debian's libnss3-tools; ./dev setup installs it)")
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True, exist_ok=True)
    database = f"sql:{nssdb}"
    subprocess.run([CERTUTIL, "-N", "-d", database, "--empty-password"], check=True, capture_output=True)
    subprocess.run(
        [CERTUTIL, "-A", "-d", database, "-n", "test root", "-t", "C,,", "-i", str(root)],
        check=True,
        capture_output=True,
    )
    return home


@contextmanager
def chromium(
    tmp_path: Path,
    *,
    camera: Path | None = None,
    size: tuple[int, int] = (1280, 800),
    trusted_root: Path | None = None,
) -> Iterator:
    """A Selenium-driven headless Chromium; with `camera`, a fake one playing that Y4M.

    By default it accepts any certificate (what a user does at the warning of a deployed
    host's self-signed one). With `trusted_root` it accepts only certificates that chain to
    the system's roots or to that one (a CA the user trusts): a page with any other
    certificate shows Chromium's warning page instead."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in QUIET:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.add_argument(f"--window-size={size[0]},{size[1]}")
    env = None
    if trusted_root is None:
        # The deployed hosts' self-signed certificate: what a user accepts at the warning.
        options.add_argument("--ignore-certificate-errors")
    else:
        env = {**os.environ, "HOME": str(trusting_home(tmp_path / "chromium-home", trusted_root))}
    if camera is not None:
        options.add_argument("--use-fake-device-for-media-stream")
        options.add_argument("--use-fake-ui-for-media-stream")
        options.add_argument(f"--use-file-for-fake-video-capture={camera}")
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER, env=env))
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: object, script: str, timeout_s: float = 60.0) -> object:
    """Poll a JavaScript expression until it is truthy; its value."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout_s, poll_frequency=0.25).until(  # type: ignore[arg-type]
        lambda d: d.execute_script(f"return {script}")
    )


def page_value(driver: object, expression: str) -> object:
    """A JavaScript expression's value in the page (its top-level variables included)."""
    return driver.execute_script(f"return {expression}")  # type: ignore[attr-defined]


def wait_for_animation_frames(driver: object, count: int, timeout_s: float = 60.0) -> None:
    """Let the page's own loop (requestAnimationFrame) run `count` more times: the chances it
    had to act, counted on the page's clock rather than slept for on ours."""
    start = driver.execute_script(  # type: ignore[attr-defined]
        "if (window.testFrames === undefined) {"
        "  window.testFrames = 0;"
        "  const count = () => { window.testFrames++; requestAnimationFrame(count); };"
        "  requestAnimationFrame(count);"
        "}"
        "return window.testFrames;"
    )
    wait_for(driver, f"window.testFrames >= {int(start) + count}", timeout_s=timeout_s)


def set_threshold(driver: object, value: float) -> None:
    driver.execute_script(  # type: ignore[attr-defined]
        "const s = document.getElementById('threshold'); s.value = arguments[0];"
        "s.dispatchEvent(new Event('input'));",
        value,
    )


def painted_pixels(driver: object) -> int:
    """Non-transparent pixels on the overlay canvas (boxes and captions drawn)."""
    return int(
        driver.execute_script(  # type: ignore[attr-defined]
            "const c = document.getElementById('overlay');"
            "const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            "let n = 0; for (let i = 3; i < data.length; i += 4) if (data[i]) n++; return n;"
        )
    )


def wait_for_labels(driver: object, timeout_s: float) -> set[str]:
    """The class names the page lists for a frame once it shows any (a CPU takes seconds a frame)."""
    text = str(
        wait_for(
            driver,
            "(t => t && t !== 'nothing detected above the threshold' && t)"
            "(document.getElementById('labels').textContent)",
            timeout_s=timeout_s,
        )
    )
    return set(re.findall(r"([a-z0-9_]+) [01]\.\d\d", text))


def save_screenshot(driver: object, path: Path, width: int = 960) -> None:
    """The page as a small JPEG (for the README: the repository stays small)."""
    shot = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")  # type: ignore[attr-defined]
    path.parent.mkdir(parents=True, exist_ok=True)
    shot.resize((width, round(shot.height * width / shot.width)), Image.Resampling.LANCZOS).save(
        path, "JPEG", quality=80, optimize=True
    )
