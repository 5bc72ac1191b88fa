"""The SSH bootstrap as a Pulumi resource (a dynamic provider around bootstrap.deploy).

- create: deploy to the host once it is up (the resource depends on it);
- diff: "update" exactly when a fingerprint (checkpoint, label map, handler,
  serving settings) or a deploy option changed, "replace" when it is another
  host (a new instance, address, user or port);
- update: deploy again (the bootstrap is idempotent: unchanged steps are skipped);
- create/update on a stack's cloud VM that is not running (stopped by idle stop,
  say) fail at once with one line (`synthdet wake`), read from the cloud's API
  (infra/power.py), instead of waiting SSH's whole timeout in silence;
- delete: undeploy, but a host that is gone or unreachable is not an error
  (the VM is often deleted right after, or was already).

The provider runs in a separate process that unpickles it, so it holds no
state, imports the bootstrap lazily, and needs this repository importable
there (`pip install -e .` into the Pulumi virtualenv). Secrets (the SSH key,
the URL secret, the endpoint URLs that carry it) stay secret in the state
through `additional_secret_outputs`.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pulumi
import pulumi.dynamic as dyn
from pulumi.runtime import rpc

if TYPE_CHECKING:
    from bootstrap.api import DeployOptions, DeployResult, SshTarget
    from serving.models import ModelSpec

# A change in one of these means another machine: deploy there, undeploy here.
# `machine_id`: the cloud's instance id, or `user@host:port` for an existing machine.
REPLACE_KEYS = ("host", "port", "user", "machine_id")
# Stacks deployed before a key was renamed keep the old name in their state: read it
# under the new one, so that the rename alone is no change (no redeploy, no new cert).
RENAMED_KEYS = {"instance_id": "machine_id"}
# A change in one of these means the same machine needs a redeploy.
UPDATE_KEYS = ("fingerprints", "options", "url_secret", "private_key")
SECRET_OUTPUTS = ["private_key", "url_secret", "endpoint", "endpoints"]
# `pulumi destroy` of a host that is gone must not wait long for SSH.
DELETE_SSH_WAIT_S = 30.0
# The VM states (infra/power.py's words) in which SSH cannot answer until someone starts it.
NOT_RUNNING = ("stopped", "stopping", "suspended")


class VmNotRunning(Exception):
    """The stack's VM is stopped (or gone): the message is one line, with what to do."""


def plain(value: Any) -> Any:
    """Inputs as plain Python values: secrets unwrapped, recursively."""
    value = rpc.unwrap_rpc_secret(value)
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def _unknown(value: Any) -> bool:
    return (
        value == rpc.UNKNOWN
        or (isinstance(value, Mapping) and any(_unknown(v) for v in value.values()))
        or (isinstance(value, list) and any(_unknown(v) for v in value))
    )


def renamed(props: Mapping[str, Any]) -> dict[str, Any]:
    """State props with every key under its current name (see RENAMED_KEYS)."""
    props = dict(props)
    for old, new in RENAMED_KEYS.items():
        if old in props and new not in props:
            props[new] = props.pop(old)
    return props


def diff_props(olds: Mapping[str, Any], news: Mapping[str, Any]) -> dyn.DiffResult:
    """What changed between the deployed state and the wanted one (pure, unit-tested)."""
    olds, news = renamed(plain(olds)), plain(news)

    def changed(key: str) -> bool:
        return _unknown(news.get(key)) or olds.get(key) != news.get(key)

    replaces = [k for k in REPLACE_KEYS if changed(k)]
    updates = [k for k in UPDATE_KEYS if changed(k)]
    # Delete first: when the "new" machine is the old one under another login,
    # undeploying after the new deploy would remove what was just deployed.
    return dyn.DiffResult(
        changes=bool(replaces or updates),
        replaces=replaces,
        delete_before_replace=bool(replaces),
    )


def ssh_target(props: Mapping[str, Any]) -> SshTarget:
    from bootstrap.api import SshTarget

    kwargs: dict[str, Any] = {}
    if props.get("known_hosts"):
        kwargs["known_hosts"] = Path(props["known_hosts"]).expanduser()
    if props.get("ssh_hint"):
        kwargs["firewall_hint"] = props["ssh_hint"]
    return SshTarget(
        host=props["host"],
        user=props["user"],
        port=int(props["port"]),
        key_pem=props["private_key"],
        **kwargs,
    )


def model_specs(props: Mapping[str, Any]) -> list[ModelSpec]:
    from serving.models import ModelSpec

    return [ModelSpec.from_dict(m) for m in props["models"]]


def deploy_options(props: Mapping[str, Any], *, deleting: bool = False) -> DeployOptions:
    """The options the program wrote (`DeployOptions.to_dict`), plus the secret and address."""
    from bootstrap.api import DeployOptions

    options = DeployOptions.from_dict(
        {**props["options"], "url_secret": props.get("url_secret") or None, "public_address": props["host"]}
    )
    return replace(options, ssh_wait_timeout_s=DELETE_SSH_WAIT_S) if deleting else options


def result_outputs(props: Mapping[str, Any], result: DeployResult) -> dict[str, Any]:
    return {
        **props,
        "endpoint": result.endpoint,
        "endpoints": dict(result.endpoints),
        "cert_sha256": result.cert_sha256,
        "public_address": result.public_address,
        "host_facts": {k: v for k, v in result.host.items() if v is not None},
        "certificate": dict(result.certificate),
        "steps": [[name, bool(changed)] for name, changed in result.steps],
    }


def _log(message: str) -> None:
    try:
        pulumi.log.info(message)
    except Exception:  # noqa: BLE001 - logging must never fail a deploy
        print(message, file=sys.stderr, flush=True)


def vm_not_running(props: Mapping[str, Any]) -> str | None:
    """One line when the stack's cloud VM cannot answer SSH (stopped, gone); None otherwise.

    Asks the cloud's API only where the program named a VM of the stack's (`cloud_vm`; not
    an existing machine) and only here, in create/update: never in a preview, nor under the
    test mocks, whose resources never reach a provider. A look-up that fails (no
    credentials, offline) stops nothing: SSH's own wait and hint follow."""
    vm = props.get("cloud_vm")
    if not isinstance(vm, Mapping) or not vm or _unknown(vm):
        return None
    from infra.power import vm_state

    try:
        state = vm_state(vm)
    except Exception as exc:  # noqa: BLE001 - a check must never be what fails a deploy
        _log(f"synthdet bootstrap: the VM's state is unknown ({exc}); connecting anyway")
        return None
    stack = props.get("stack") or "NAME"
    if state.state in NOT_RUNNING:
        return (
            f"the VM is {state.state} (idle stop?): `synthdet wake --stack {stack}`, then rerun "
            f"({state.where}: {state.cloud_state})"
        )
    if state.state == "gone":
        return f"the VM is gone ({state.where}): `pulumi up --refresh --stack {stack}` makes a new one"
    return None


class BootstrapProvider(dyn.ResourceProvider):
    """CRUD for one deployment on one host; every method works from the props alone."""

    # The provider holds no secrets: no need to make its serialized form one.
    serialize_as_secret_always = False

    def create(self, props: dict[str, Any]) -> dyn.CreateResult:
        props = plain(props)
        result = self._deploy(props)
        return dyn.CreateResult(id_=props["machine_id"], outs=result_outputs(props, result))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dyn.DiffResult:
        return diff_props(olds, news)

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> dyn.UpdateResult:
        props = plain(news)
        return dyn.UpdateResult(outs=result_outputs(props, self._deploy(props)))

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        from bootstrap.deploy import undeploy

        props = plain(props)
        stopped = vm_not_running(props)
        if stopped is not None:  # nothing answers SSH there: the VM goes, or keeps its files
            _log(f"synthdet bootstrap: undeploy on {props.get('host')} skipped: {stopped}")
            return
        try:
            undeploy(ssh_target(props), deploy_options(props, deleting=True))
        except Exception as exc:  # noqa: BLE001 - a gone VM must not block `pulumi destroy`
            _log(f"synthdet bootstrap: undeploy on {props.get('host')} skipped ({type(exc).__name__}: {exc})")

    def _deploy(self, props: dict[str, Any]) -> DeployResult:
        from bootstrap.api import LineReporter
        from bootstrap.deploy import deploy

        stopped = vm_not_running(props)
        if stopped is not None:
            raise VmNotRunning(stopped)
        progress = LineReporter(_log, "synthdet bootstrap: ")
        return deploy(ssh_target(props), model_specs(props), deploy_options(props), progress)


@dataclass
class BootstrapArgs:
    """What the resource deploys where; Output-valued fields are resolved by Pulumi."""

    host: pulumi.Input[str]  # the IP address or DNS name to SSH to (and the certificate's)
    user: str
    private_key: pulumi.Input[str]  # secret
    # What identifies the machine (`Host.machine_id`): a change means another machine.
    machine_id: pulumi.Input[str]
    models: list[ModelSpec]
    options: DeployOptions  # without the URL secret (passed apart, as a secret)
    url_secret: pulumi.Input[str]  # secret
    port: int = 22
    known_hosts: pulumi.Input[str] | None = None
    # Who the firewall admits on SSH and how to change it (infra/ssh_access.py), said when
    # SSH stays silent. Not a diff key: a changed address alone redeploys nothing.
    ssh_hint: str = ""
    # Where the cloud's API finds the stack's VM (`Host.cloud_vm`; None: an existing machine),
    # and the stack's name, to say at once that it is stopped. Not diff keys either.
    cloud_vm: pulumi.Input[dict[str, str]] | None = None
    stack: str = ""

    def props(self) -> dict[str, Any]:
        from serving.archive import archive_key

        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "private_key": pulumi.Output.secret(self.private_key),
            "machine_id": self.machine_id,
            "known_hosts": self.known_hosts,
            "ssh_hint": self.ssh_hint,
            "cloud_vm": self.cloud_vm,
            "stack": self.stack,
            "models": [m.to_dict() for m in self.models],
            # Computed here, on every preview: the plan shows "update" exactly when a
            # checkpoint, label map, the handler's source or the serving settings changed.
            "fingerprints": {m.name: archive_key(m, self.options.serving) for m in self.models},
            "options": {k: v for k, v in self.options.to_dict().items() if k != "url_secret"},
            "url_secret": pulumi.Output.secret(self.url_secret),
            # Outputs, filled in by create/update.
            "endpoint": None,
            "endpoints": None,
            "cert_sha256": None,
            "public_address": None,
            "host_facts": None,
            "certificate": None,
            "steps": None,
        }


class Bootstrap(dyn.Resource, module="synthdet", name="Bootstrap"):
    """The deployment on a host; its outputs are the endpoint and certificate."""

    endpoint: pulumi.Output[str]
    endpoints: pulumi.Output[dict[str, str]]
    cert_sha256: pulumi.Output[str]
    public_address: pulumi.Output[str]
    host_facts: pulumi.Output[dict[str, str]]
    # source (acme, self-signed, user), public (yes/no), note (issuer and expiry, or why not).
    certificate: pulumi.Output[dict[str, str]]

    def __init__(self, name: str, args: BootstrapArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        opts = pulumi.ResourceOptions.merge(
            opts, pulumi.ResourceOptions(additional_secret_outputs=SECRET_OUTPUTS)
        )
        super().__init__(BootstrapProvider(), name, args.props(), opts)
