"""The Pulumi bootstrap provider's create, diff, update and delete, for real, on a test host.

The provider is driven the way the Pulumi engine drives it (props in, outputs
out) but without the engine: the host is a systemd test host reached over SSH
as root (the ssh stack's default login: the suite's one deploy as root), the
deploy is the real bootstrap, the model an untrained checkpoint on CPU.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pulumi.runtime import rpc

from bootstrap.api import DeployOptions
from infra.bootstrap_resource import BootstrapArgs, BootstrapProvider, diff_props
from serving.models import ModelSpec
from serving.settings import ServingSettings
from tests.support import testhost as th
from tests.support.deployment import wheelhouse_pip

pytestmark = [pytest.mark.system, pytest.mark.timeout(3600)]

UNIT = "synthdet-torchserve"


def provider_props(info: th.TestHostInfo, checkpoint: Path, serving: ServingSettings) -> dict:
    """What the program would hand the provider for this host (secrets wrapped as the engine does)."""
    args = BootstrapArgs(
        host=info.host,
        user=info.user,
        private_key=Path(info.key).read_text(),
        machine_id=f"testhost:{info.name}",
        models=[ModelSpec("synthdet", checkpoint)],
        options=DeployOptions(serving=serving, pip=wheelhouse_pip(info)),
        url_secret="PulumiProviderSystemTest0123456",
        port=info.port,
        known_hosts=info.known_hosts,
    )
    # props() wraps the secrets in Outputs, which need an event loop (a Pulumi program has one).
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        props = args.props()
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    # As the engine hands them to a provider: secrets wrapped, numbers as floats.
    props["private_key"] = rpc.wrap_rpc_secret(args.private_key)
    props["url_secret"] = rpc.wrap_rpc_secret(args.url_secret)
    props["port"] = float(info.port)
    return props


def post_jpeg(url: str, jpeg: bytes, timeout: float = 60.0) -> tuple[int, bytes]:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the app accepts any certificate; so do we here
    request = urllib.request.Request(url, data=jpeg, method="POST", headers={"Content-Type": "image/jpg"})
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def small_jpeg() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (320, 240), (200, 180, 40)).save(buffer, "JPEG", quality=75)
    return buffer.getvalue()


def unit_state(info: th.TestHostInfo) -> str:
    _, out, _ = th.ssh_exec(info, f"systemctl is-active {UNIT} || true", 60)
    return out.strip()


@pytest.fixture
def host(fresh_testhost: Callable[..., th.TestHostInfo]) -> th.TestHostInfo:
    return fresh_testhost(login="root")


@pytest.fixture
def serving() -> ServingSettings:
    # CPU in the test host: one small warm-up keeps start-up short.
    return ServingSettings(workers=1, batch_size=1, warmup_sizes=((320, 240),))


def test_create_diff_update_delete(
    host: th.TestHostInfo, unity_checkpoint: Path, serving: ServingSettings
) -> None:
    provider = BootstrapProvider()
    props = provider_props(host, unity_checkpoint, serving)

    # create: a working endpoint whose URL carries the secret
    created = provider.create(props)
    outs: dict[str, Any] = created.outs
    assert created.id == f"testhost:{host.name}"
    endpoint = outs["endpoint"]
    assert endpoint.startswith(f"https://{host.host}")
    assert "PulumiProviderSystemTest0123456" in endpoint
    assert outs["cert_sha256"].count(":") == 31
    status, body = post_jpeg(endpoint, small_jpeg())
    assert status == 200 and body.strip().startswith(b"[")
    assert unit_state(host) == "active"

    # diff: the same inputs (as the engine would send them back) -> nothing to do
    assert diff_props(outs, props).changes is False

    # diff + update: a serving setting changed -> update in place, same URL
    tuned = ServingSettings(workers=1, batch_size=1, warmup_sizes=((320, 240),), score_threshold=0.9)
    new_props = provider_props(host, unity_checkpoint, tuned)
    result = diff_props(outs, new_props)
    assert result.changes is True and result.replaces == []
    updated = provider.update(created.id, outs, new_props).outs
    assert updated["endpoint"] == endpoint
    assert updated["options"]["serving"]["score_threshold"] == 0.9
    assert any(changed for _, changed in updated["steps"])
    status, body = post_jpeg(endpoint, small_jpeg())
    assert status == 200 and body.strip().startswith(b"[")

    # an update with nothing new on the host changes no step
    again = provider.update(created.id, updated, new_props).outs
    assert not any(changed for _, changed in again["steps"])

    # delete: the service is gone from the host
    provider.delete(created.id, again)
    assert unit_state(host) != "active"


def test_delete_tolerates_a_host_that_is_gone(
    host: th.TestHostInfo, unity_checkpoint: Path, serving: ServingSettings
) -> None:
    props = provider_props(host, unity_checkpoint, serving)
    th.down(host.name)  # the VM was deleted (or stopped) behind Pulumi's back
    started = time.monotonic()
    BootstrapProvider().delete(props["machine_id"], props)  # must not raise
    assert time.monotonic() - started < 120
