"""Run the Pulumi program under `pulumi.runtime.set_mocks` and record the resource graph.

Nothing reaches a cloud: resources get fake ids and outputs, data-source calls
(image and AMI look-ups) get canned answers, and every registration is kept
with its inputs, its dependencies and its secret-output list so tests can
assert policy (GPU, ports, CIDRs, secrets, ordering) on the graph itself.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import yaml
from pulumi.runtime import rpc
from pulumi.runtime import settings as runtime_settings
from pulumi.runtime.mocks import MockCallArgs, MockMonitor, MockResourceArgs
from pulumi.runtime.stack import wait_for_rpcs
from pulumi.runtime.sync_await import _sync_await

REPO = Path(__file__).resolve().parents[2]
PROJECT_FILE = REPO / "Pulumi.yaml"
STACKS_DIR = REPO / "stacks"

FAKE_PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMockMockMockMockMockMockMockMockMockMock"
FAKE_PRIVATE_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nMOCKPRIVATEKEYMATERIAL\n-----END OPENSSH PRIVATE KEY-----\n"
)
FAKE_URL_SECRET = "UrlSecretUrlSecretUrlSecret12345"
FAKE_AMI = "ami-0123456789abcdef0"
GCP_IP = "203.0.113.10"
GCP_PROJECT = "mock-project"
AWS_IP = "203.0.113.20"
CERT = "AB:CD:EF"
BOOTSTRAP_TYPE = "pulumi-python:dynamic/synthdet:Bootstrap"


@dataclass
class Registered:
    type: str
    name: str
    urn: str
    inputs: dict[str, Any]
    dependencies: list[str]
    parent: str
    additional_secret_outputs: list[str]

    def plain(self, key: str) -> Any:
        return unwrap(self.inputs.get(key))

    def is_secret(self, key: str) -> bool:
        return rpc.is_rpc_secret(self.inputs.get(key))


@dataclass
class ProgramRun:
    resources: list[Registered]
    calls: list[tuple[str, dict[str, Any]]]
    outputs: dict[str, Any]
    secret_outputs: set[str]
    logs: list[str] = field(default_factory=list)

    def of_type(self, type_: str) -> list[Registered]:
        return [r for r in self.resources if r.type == type_]

    def one(self, type_: str) -> Registered:
        found = self.of_type(type_)
        assert len(found) == 1, f"expected one {type_}, got {[r.name for r in found]}"
        return found[0]

    def by_urn(self, urn: str) -> Registered:
        return next(r for r in self.resources if r.urn == urn)

    def types(self) -> set[str]:
        return {r.type for r in self.resources}


def unwrap(value: Any) -> Any:
    value = rpc.unwrap_rpc_secret(value)
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


class GraphMocks(pulumi.runtime.Mocks):
    """Fake outputs per resource type; records data-source calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def new_resource(self, args: MockResourceArgs) -> tuple[str | None, dict]:
        outputs = dict(args.inputs)
        outputs.update(self._computed(args.typ, args.name, unwrap(args.inputs)))
        return f"{args.name}-id", outputs

    def _computed(self, typ: str, name: str, inputs: dict[str, Any]) -> dict[str, Any]:
        if typ == "tls:index/privateKey:PrivateKey":
            return {"public_key_openssh": FAKE_PUBLIC_KEY + "\n", "private_key_openssh": FAKE_PRIVATE_KEY}
        if typ == "random:index/randomPassword:RandomPassword":
            return {"result": FAKE_URL_SECRET}
        if typ == "gcp:compute/address:Address":
            return {"address": GCP_IP}
        if typ == "gcp:compute/instance:Instance":
            # As the provider fills them: an auto-name, the provider's project when none is given.
            return {
                "instance_id": "4242",
                "name": f"{name}-1a2b3c4",
                "project": inputs.get("project") or GCP_PROJECT,
            }
        if typ == "aws:ec2/eip:Eip":
            return {"public_ip": AWS_IP, "allocation_id": "eipalloc-1"}
        if typ == "aws:ec2/keyPair:KeyPair":
            return {"key_name": f"{name}-generated"}
        if typ == BOOTSTRAP_TYPE:
            url = (
                f"https://{inputs['host']}:{int(inputs['options']['public_port'])}/"
                f"{inputs['url_secret']}/predictions/synthdet"
            )
            return {
                "endpoint": url,
                "endpoints": {"synthdet": url},
                "cert_sha256": CERT,
                "public_address": inputs["host"],
                "host_facts": {"gpu": "mock"},
            }
        return {}

    def call(self, args: MockCallArgs) -> dict:  # type: ignore[override]
        self.calls.append((args.token, unwrap(args.args)))
        if args.token == "gcp:compute/getImage:getImage":
            family, project = args.args.get("family"), args.args.get("project")
            return {
                "self_link": f"https://www.googleapis.com/compute/v1/projects/{project}"
                f"/global/images/{family}-v20261001",
                "family": family,
                "name": f"{family}-v20261001",
            }
        if args.token == "aws:ec2/getAmi:getAmi":
            return {"id": FAKE_AMI, "name": "mock DLAMI"}
        return {}


class RecordingMonitor(MockMonitor):
    """The mock monitor, also keeping what `Mocks` does not see (dependencies, secrets)."""

    def __init__(self, mocks: GraphMocks) -> None:
        super().__init__(mocks)
        self.registered: list[Registered] = []

    def RegisterResource(self, request):  # noqa: N802 - gRPC method name
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            self.registered.append(
                Registered(
                    type=request.type,
                    name=request.name,
                    urn=response.urn,
                    inputs=rpc.deserialize_properties(request.object),
                    dependencies=list(request.dependencies),
                    parent=request.parent,
                    additional_secret_outputs=list(request.additionalSecretOutputs),
                )
            )
        return response


class _LogCatcher:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def _add(self, msg: str, *args: Any, **_: Any) -> None:
        self.lines.append(msg % args if args else msg)

    debug = info = warning = error = _add


def project_defaults() -> dict[str, Any]:
    """What the engine applies from Pulumi.yaml before the program runs."""
    project = yaml.safe_load(PROJECT_FILE.read_text())
    name = project["name"]
    return {f"{name}:{key}": decl["default"] for key, decl in project["config"].items() if "default" in decl}


def stack_config(stack: str) -> dict[str, Any]:
    data = yaml.safe_load((STACKS_DIR / f"Pulumi.{stack}.yaml").read_text()) or {}
    return dict(data.get("config") or {})


def stack_names() -> list[str]:
    return sorted(p.name[len("Pulumi.") : -len(".yaml")] for p in STACKS_DIR.glob("Pulumi.*.yaml"))


def _ensure_event_loop() -> None:
    """Pulumi's mocks make futures on the current event loop, and a test that ran
    asyncio.run() earlier in this process leaves none behind: make one only then (one per
    run would leak its file descriptors)."""
    try:
        loop = asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:
        loop = None
    if loop is None or loop.is_closed():
        asyncio.set_event_loop(asyncio.new_event_loop())


def run_program(stack: str, overrides: dict[str, Any] | None = None) -> ProgramRun:
    """Run infra/__main__.py's main() for a stack file plus overrides, against mocks."""
    from infra.__main__ import main
    from infra.preflight import engine_value

    config = {**project_defaults(), **stack_config(stack), **(overrides or {})}
    config = {k: engine_value(v) for k, v in config.items() if v is not None}
    pulumi.runtime.set_all_config(config)

    _ensure_event_loop()
    mocks = GraphMocks()
    monitor = RecordingMonitor(mocks)
    logs = _LogCatcher()
    runtime_settings.ROOT.set(None)  # a fresh Stack for every run
    pulumi.runtime.set_mocks(
        mocks, project="synthdet", stack=stack, preview=False, monitor=monitor, logger=logs
    )  # type: ignore[arg-type]
    runtime_settings.SETTINGS.rpc_manager.clear()
    runtime_settings.SETTINGS.outputs.clear()

    main()
    _sync_await(wait_for_rpcs())

    root = runtime_settings.get_root_resource()
    outputs: dict[str, Any] = {}
    secret: set[str] = set()
    for name, value in root.outputs.items():  # type: ignore[union-attr]
        out = pulumi.Output.from_input(value)
        outputs[name] = _sync_await(out.future())
        if _sync_await(out.is_secret()):
            secret.add(name)
    return ProgramRun(monitor.registered, mocks.calls, outputs, secret, logs.lines)
