"""The web viewer through nginx on a deployed host, as a phone's browser meets it.

Headless Chromium with a fake camera opens the endpoint URL exactly as the QR holds
it (https, the secret in the path, the host's self-signed certificate accepted as a
user accepts it at the warning), streams frames and lists what the model detects.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from handler.labels import load_label_names
from tests.support.browser import (
    chromium,
    painted_pixels,
    require_chromium,
    set_threshold,
    wait_for_labels,
    write_y4m,
)
from tests.support.deployment import Deployment

pytestmark = pytest.mark.system


def test_the_qr_url_opens_a_live_viewer_through_nginx(deployed_host: Deployment, tmp_path: Path) -> None:
    require_chromium()
    camera = write_y4m(tmp_path / "camera.y4m", size=(1280, 720))
    with chromium(tmp_path, camera=camera) as driver:
        driver.get(deployed_host.endpoint)
        assert driver.execute_script("return window.isSecureContext") is True
        set_threshold(driver, 0.5)
        shown = wait_for_labels(driver, timeout_s=300)
        assert shown and shown <= set(load_label_names())
        assert painted_pixels(driver) > 1000
        rtt = driver.execute_script("return document.getElementById('rtt').textContent")
        print(f"viewer through nginx: {len(shown)} labels, round trip {rtt}")
