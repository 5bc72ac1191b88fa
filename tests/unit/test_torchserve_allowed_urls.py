"""TorchServe may register models from its model store only (`allowed_urls`).

TorchServe reads config.properties with java.util.Properties (a backslash escapes the
next character and is dropped), splits `allowed_urls` at commas and matches a
registration URL that looks like a URL against each entry, case-insensitively and
whole (ArchiveUtils.validateURL). The checks below apply the same rules; the
deployed host's management API refusing for real is in tests/system/test_exposure.py.
"""

from __future__ import annotations

import re

import pytest

from serving.settings import ServingSettings
from serving.torchserve_config import allowed_urls, render_config_properties

# TorchServe's own test for "is this URL-shaped" (ArchiveUtils.VALID_URL_PATTERN).
URL_SHAPED = re.compile(r"file?://.*|http(s)?://.*", re.IGNORECASE)


def admitted(patterns: str, url: str) -> bool:
    """What TorchServe does with `url`: True if it would fetch it, False if it refuses it."""
    assert URL_SHAPED.fullmatch(url), "only URL-shaped names are checked against allowed_urls"
    return any(re.fullmatch(p, url, re.IGNORECASE) for p in patterns.split(","))


def rendered(model_store: str) -> str:
    text = render_config_properties(
        inference_address="http://127.0.0.1:18080",
        management_address="http://127.0.0.1:18081",
        metrics_address="http://127.0.0.1:18082",
        model_store=model_store,
        models={"synthdet": "synthdet.mar"},
        serving=ServingSettings(),
        enable_model_api=True,
    )
    [line] = [line for line in text.splitlines() if line.startswith("allowed_urls=")]
    value = line.split("=", 1)[1]
    # No backslash: Properties would eat it, and the regex read would differ from the one written.
    assert "\\" not in value
    return value


def test_the_deployed_config_admits_archives_in_the_model_store_only() -> None:
    patterns = rendered("/var/lib/synthdet/model-store")
    assert admitted(patterns, "file:///var/lib/synthdet/model-store/synthdet.mar")
    for refused in (
        "file:///srv/synthdet.mar",
        "file:///var/lib/synthdet/tmp/synthdet.mar",
        "file:///var/lib/synthdet/model-store/sub/synthdet.mar",
        "file:///var/lib/synthdet/model-store/synthdet.tar.gz",
        "file:///var/lib/synthdet/model-storeX/synthdet.mar",
        "file:///var/lib/synthdet/model-store",
        "file://attacker.example/var/lib/synthdet/model-store/synthdet.mar",
        "http://127.0.0.1:8000/synthdet.mar",
        "https://attacker.example/var/lib/synthdet/model-store/synthdet.mar",
        "HTTPS://example.com/synthdet.mar",
        "fil:///srv/synthdet.mar",
    ):
        assert not admitted(patterns, refused), refused


def test_characters_with_a_regex_meaning_in_the_store_path_are_literal() -> None:
    patterns = rendered("/tmp/pytest-of-root/a.b+c$(d)/model-store/")
    assert admitted(patterns, "file:///tmp/pytest-of-root/a.b+c$(d)/model-store/x.mar")
    # "." must not stand for any character, "+" must not repeat.
    assert not admitted(patterns, "file:///tmp/pytest-of-root/aXb+c$(d)/model-store/x.mar")
    assert not admitted(patterns, "file:///tmp/pytest-of-root/a.bbc$(d)/model-store/x.mar")


@pytest.mark.parametrize("store", ["model-store", "/a,b/store", "/a[b]/store", "/a\\b/store", "/a\nb"])
def test_a_store_path_the_pattern_cannot_carry_is_refused(store: str) -> None:
    with pytest.raises(ValueError, match="model store"):
        allowed_urls(store)
