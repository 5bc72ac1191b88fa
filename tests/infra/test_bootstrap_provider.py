"""The bootstrap dynamic provider's logic, with bootstrap.deploy stubbed out.

(The same provider against a real SSH test host: tests/system/test_pulumi_provider.py.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pulumi.runtime import rpc

import bootstrap.deploy
from bootstrap.api import DeployOptions, DeployResult, PipSource
from infra.bootstrap_resource import (
    DELETE_SSH_WAIT_S,
    BootstrapProvider,
    deploy_options,
    diff_props,
    model_specs,
    ssh_target,
)

KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n"


def options_dict(**changes: Any) -> dict[str, Any]:
    """What the program writes: DeployOptions.to_dict() without the URL secret."""
    options = DeployOptions(pip=PipSource(find_links="http://10.0.0.1/wheels/", trusted_hosts=("10.0.0.1",)))
    data = {k: v for k, v in options.to_dict().items() if k != "url_secret"}
    return {**data, **changes}


def props(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "host": "203.0.113.10",
        "port": 22.0,  # numbers arrive as floats from the engine
        "user": "synthdet",
        "private_key": rpc.wrap_rpc_secret(KEY),
        "machine_id": "projects/p/zones/z/instances/vm-1",
        "known_hosts": "/tmp/kh",
        "models": [{"name": "synthdet", "checkpoint": "/models/a.pth", "label_map": None}],
        "fingerprints": {"synthdet": "a" * 64},
        "options": options_dict(),
        "url_secret": rpc.wrap_rpc_secret("S" * 32),
    }
    base.update(changes)
    return base


# ------------------------------------------------------------------ diff


def test_nothing_changed_means_no_diff():
    result = diff_props(props(endpoint="https://x/y"), props())
    assert result.changes is False
    assert result.replaces == []


def test_secret_wrapping_alone_is_not_a_change():
    olds = props(private_key=KEY, url_secret="S" * 32)  # stored outputs come back unwrapped
    assert diff_props(olds, props()).changes is False


@pytest.mark.parametrize(
    "key, value",
    [
        ("fingerprints", {"synthdet": "d" * 64}),
        ("options", options_dict(serving={"score_threshold": 0.7})),
        ("options", options_dict(public_port=8443.0)),
        ("url_secret", rpc.wrap_rpc_secret("T" * 32)),
        ("options", options_dict(pip={})),
        ("options", options_dict(torch_version="2.8.0")),
    ],
)
def test_content_or_option_changes_update_in_place(key, value):
    result = diff_props(props(), props(**{key: value}))
    assert result.changes is True
    assert result.replaces == []


def test_moving_a_checkpoint_without_changing_it_is_not_a_change():
    moved = [{"name": "synthdet", "checkpoint": "/elsewhere/a.pth", "label_map": None}]
    assert diff_props(props(), props(models=moved)).changes is False


@pytest.mark.parametrize(
    "key, value",
    [
        ("host", "203.0.113.99"),
        ("machine_id", "projects/p/zones/z/instances/vm-2"),
        ("user", "ubuntu"),
        ("port", 2222.0),
    ],
)
def test_another_machine_replaces_deleting_first(key, value):
    result = diff_props(props(), props(**{key: value}))
    assert result.changes is True
    assert result.replaces == [key]
    assert result.delete_before_replace is True


def test_unknown_host_in_preview_is_a_replacement():
    result = diff_props(props(), props(host=rpc.UNKNOWN, machine_id=rpc.UNKNOWN))
    assert set(result.replaces) == {"host", "machine_id"}


def test_state_from_before_machine_id_was_named_so_is_no_change():
    """Stacks deployed earlier stored the machine's id as `instance_id`: reading that state
    must not replace the bootstrap (an undeploy, a redeploy and a new certificate)."""
    old_state = props()
    old_state["instance_id"] = old_state.pop("machine_id")
    assert diff_props(old_state, props()).changes is False
    moved = diff_props(old_state, props(machine_id="projects/p/zones/z/instances/vm-2"))
    assert moved.replaces == ["machine_id"]


# ------------------------------------------------------------------ mapping to the bootstrap API


def test_target_models_and_options_from_props():
    p = props(private_key=KEY, url_secret="S" * 32, port=2222.0)
    target = ssh_target(p)
    assert (target.host, target.user, target.port, target.key_pem) == ("203.0.113.10", "synthdet", 2222, KEY)
    assert target.known_hosts == Path("/tmp/kh")
    (spec,) = model_specs(p)
    assert spec.name == "synthdet" and spec.checkpoint == Path("/models/a.pth")
    options = deploy_options(p)
    assert options.public_port == 443
    assert options.url_secret == "S" * 32
    assert options.public_address == "203.0.113.10"
    assert options.pip.find_links == "http://10.0.0.1/wheels/"
    assert options.pip.trusted_hosts == ("10.0.0.1",)
    assert options.serving.score_threshold == 0.5
    assert options.ssh_wait_timeout_s == DeployOptions.ssh_wait_timeout_s  # the one default
    assert deploy_options(p, deleting=True).ssh_wait_timeout_s == DELETE_SSH_WAIT_S


def fake_result(host: str) -> DeployResult:
    url = f"https://{host}/{'S' * 32}/predictions/synthdet"
    return DeployResult(
        endpoints={"synthdet": url},
        endpoint=url,
        cert_sha256="AA:BB",
        changed=True,
        public_address=host,
        steps=[("layout", True)],
        host={"gpu": "Tesla T4", "os": None},
    )


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    seen: list[tuple[str, Any]] = []

    def deploy(target, models, options=None, progress=None):
        seen.append(("deploy", (target, list(models), options)))
        return fake_result(target.host)

    def undeploy(target, options=None):
        seen.append(("undeploy", (target, options)))

    monkeypatch.setattr(bootstrap.deploy, "deploy", deploy)
    monkeypatch.setattr(bootstrap.deploy, "undeploy", undeploy)
    return seen


def test_create_deploys_and_returns_endpoint(calls):
    result = BootstrapProvider().create(props())
    assert result.id == "projects/p/zones/z/instances/vm-1"
    outs = result.outs
    assert outs["endpoint"].endswith("/predictions/synthdet")
    assert outs["cert_sha256"] == "AA:BB"
    assert outs["host_facts"] == {"gpu": "Tesla T4"}
    assert outs["steps"] == [["layout", True]]
    assert outs["private_key"] == KEY  # kept secret by additional_secret_outputs
    ((kind, (target, models, options)),) = calls
    assert kind == "deploy" and target.key_pem == KEY and options.url_secret == "S" * 32


def test_update_redeploys_with_the_new_props(calls):
    new = props(options=options_dict(serving={"score_threshold": 0.8}))
    outs = BootstrapProvider().update("id", props(), new).outs
    assert outs["options"]["serving"] == {"score_threshold": 0.8}
    assert calls[0][1][2].serving.score_threshold == 0.8


def test_delete_undeploys_with_a_short_timeout(calls):
    BootstrapProvider().delete("id", props())
    ((kind, (target, options)),) = calls
    assert kind == "undeploy"
    assert options.ssh_wait_timeout_s == DELETE_SSH_WAIT_S


def test_delete_tolerates_a_gone_host(monkeypatch):
    def undeploy(target, options=None):
        raise OSError("no route to host")

    monkeypatch.setattr(bootstrap.deploy, "undeploy", undeploy)
    BootstrapProvider().delete("id", props())  # no exception: destroy goes on


def test_provider_pickles_without_secrets():
    import dill

    blob = dill.dumps(BootstrapProvider(), recurse=True)
    assert b"PRIVATE KEY" not in blob
    assert isinstance(dill.loads(blob), BootstrapProvider)
