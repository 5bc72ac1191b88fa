"""The Pulumi program: read the stack's settings once, build the host (or fleet), deploy, export.

`pulumi up --stack gcp-t4` (or aws-m60, aws-t4, ssh) runs this file. It only
wires: the cloud is a config value (`synthdet:cloud`) naming a module that
builds a `Host` or a `Fleet` (infra/gcp, infra/aws, infra/existing.py), the
bootstrap is one resource that only ever sees the `Host`, and the outputs
describe the endpoint whatever the cloud.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

# Pulumi runs this directory as a script, which puts the directory itself first
# on sys.path: then `aws`, `gcp` or `config` would resolve to our modules, not
# packages. Import through the repository root instead (`infra.*`, `bootstrap.*`),
# which also works when the project is not pip-installed.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if not (p and Path(p).resolve() == _HERE)]
if str(_HERE.parent) not in sys.path:
    sys.path.insert(0, str(_HERE.parent))

import pulumi  # noqa: E402
import pulumi_random as random  # noqa: E402

from bootstrap.api import LETS_ENCRYPT_TERMS  # noqa: E402
from infra import aws, existing, gcp, preflight, ssh_access  # noqa: E402
from infra.bootstrap_resource import Bootstrap, BootstrapArgs  # noqa: E402
from infra.config import Settings, read_settings  # noqa: E402
from infra.fleet import Fleet  # noqa: E402
from infra.host import Host  # noqa: E402
from infra.network import resolve_cidrs  # noqa: E402
from infra.pricing import load_prices  # noqa: E402
from serving.endpoint import prediction_url  # noqa: E402
from serving.models import DEFAULT_MODEL_NAME  # noqa: E402
from serving.qr import render_terminal  # noqa: E402

# `synthdet:cloud` -> the module with build_host(settings) and build_fleet(settings, secret).
CLOUDS: dict[str, ModuleType] = {"gcp": gcp, "aws": aws, "ssh": existing}


def build_bootstrap(settings: Settings, host: Host, url_secret: pulumi.Output[str]) -> Bootstrap:
    if settings.stack.uses_acme:  # the host's account agrees to the CA's terms: say whose
        pulumi.log.info(
            f"synthdet:acme: the host gets its certificate from {settings.stack.acme_directory} and "
            f"its account agrees to the CA's terms of service ({LETS_ENCRYPT_TERMS} for Let's "
            "Encrypt); `pulumi config set synthdet:acme false` for a self-signed certificate"
        )
    return Bootstrap(
        "bootstrap",
        BootstrapArgs(
            host=host.address,
            port=host.ssh_port,
            user=host.ssh_user,
            private_key=host.ssh_private_key,
            machine_id=host.machine_id,
            known_hosts=host.known_hosts,
            models=settings.stack.model_specs(),
            options=settings.stack.deploy_options(),
            url_secret=url_secret,
            ssh_hint=ssh_hint(settings),
            cloud_vm=host.cloud_vm,
            stack=pulumi.get_stack(),
        ),
        # The host must exist (and have its address) before SSH can reach it.
        opts=pulumi.ResourceOptions(depends_on=host.ready),
    )


def export_endpoint(settings: Settings, endpoints: pulumi.Output[dict[str, str]]) -> None:
    """The URLs and the QR that holds one: secrets, since the URL is the credential."""
    endpoint = endpoints.apply(lambda e: e.get(DEFAULT_MODEL_NAME) or next(iter(e.values())))
    pulumi.export("endpoint", pulumi.Output.secret(endpoint))
    pulumi.export("endpoints", pulumi.Output.secret(endpoints))
    # Plain blocks, no colour codes: Pulumi's output does not pass ANSI through.
    qr = endpoint.apply(lambda url: render_terminal(url, ansi=False))
    pulumi.export("qr", pulumi.Output.secret(qr))
    if settings.stack.show_qr:  # opt-in: the update log is kept by the backend
        pulumi.Output.unsecret(qr).apply(
            lambda text: pulumi.log.info("Scan this with the SynthDet Viewer or a phone camera:\n" + text)
        )
    pulumi.export("hourly_cost_as_of", load_prices().as_of.isoformat())


def export_host(settings: Settings, host: Host, bootstrap: Bootstrap) -> None:
    export_endpoint(settings, bootstrap.endpoints)
    if host.instance_id is not None:  # a VM of the stack's: its static public IP and cloud id
        pulumi.export("public_ip", host.address)
        pulumi.export("instance_id", host.instance_id)
    else:  # an existing machine: the name or address configured, maybe neither public nor an IP
        pulumi.export("address", host.address)
    port = f" -p {host.ssh_port}" if host.ssh_port != 22 else ""
    pulumi.export(
        "ssh_command",
        host.address.apply(lambda a: f"ssh -i {host.ssh_key_path}{port} {host.ssh_user}@{a}"),
    )
    pulumi.export("ssh_private_key", pulumi.Output.secret(host.ssh_private_key))
    # With ACME the fingerprint is the certificate's at this deploy: the host renews it.
    pulumi.export("cert_sha256", bootstrap.cert_sha256)
    pulumi.export("certificate", bootstrap.certificate)
    pulumi.export("host_facts", bootstrap.host_facts)
    pulumi.export("hourly_cost_usd", host.hourly_cost_usd)
    export_idle_stop(settings, host, bootstrap)


def export_idle_stop(settings: Settings, host: Host, bootstrap: Bootstrap) -> None:
    """What `synthdet wake`/`status` read (plain outputs: nothing secret), and the lines at the
    end of `pulumi up` that say when the host stops and how to wake it."""
    minutes = settings.stack.idle_stop_minutes
    pulumi.export("idle_stop_minutes", minutes)
    if host.cloud_vm is not None:
        pulumi.export("cloud_vm", host.cloud_vm)
        pulumi.export("stopped_hourly_cost_usd", host.stopped_hourly_cost_usd)
    # Once the host is deployed (an apply on a deploy output: not said by a preview).
    bootstrap.cert_sha256.apply(lambda _: pulumi.log.info(idle_stop_line(settings, host)))


def dollars(usd: float) -> str:
    return f"${usd:.2f}" if usd >= 0.1 else f"${usd:.3f}"


def idle_stop_line(settings: Settings, host: Host) -> str:
    stack, minutes = pulumi.get_stack(), settings.stack.idle_stop_minutes
    cost = f"{dollars(host.hourly_cost_usd)}/h" if host.hourly_cost_usd is not None else "its hourly price"
    if not minutes:
        if host.cloud_vm is None:
            return "synthdet: idle stop is off (`pulumi config set synthdet:idleStopMinutes 30` turns it on)"
        return (
            f"synthdet: this host runs, at {cost}, until `pulumi destroy --stack {stack}`; with "
            "`pulumi config set synthdet:idleStopMinutes 30` it powers itself off after 30 minutes "
            f"nobody used it, and `synthdet wake --stack {stack}` starts it again"
        )
    said = (
        f"synthdet: this host powers itself off after {minutes} minutes without a prediction request "
        f"(or a login); `synthdet status --stack {stack}` shows the idle minutes and what it costs now"
    )
    if host.cloud_vm is None:  # an existing machine: no cloud API of ours can start it
        return said + "; power the machine on again yourself (the same URL answers once it is up)"
    stopped = (
        f" ({dollars(host.stopped_hourly_cost_usd)}/h for disk and address)"
        if host.stopped_hourly_cost_usd is not None
        else ""
    )
    return (
        f"{said}. Stopped, it keeps its disk and address{stopped}: `synthdet wake --stack {stack}` "
        "starts it and waits until it answers, with the same URL and QR code"
    )


def export_fleet(settings: Settings, fleet: Fleet, url_secret: pulumi.Output[str]) -> None:
    names = [m.name for m in settings.stack.model_specs()]
    endpoints = pulumi.Output.all(fleet.base_url, url_secret).apply(
        lambda v: {name: prediction_url(v[0], name, v[1]) for name in names}
    )
    export_endpoint(settings, endpoints)
    low, high = settings.stack.replica_range
    # Not `public_ip`: on AWS the balancer's address is a DNS name. Not `instance_id`: a group.
    pulumi.export("address", fleet.address)
    pulumi.export("load_balancer_url", fleet.base_url)
    pulumi.export("group_id", fleet.group_id)
    pulumi.export("replicas", {"min": low, "max": high})
    pulumi.export("bucket", fleet.bucket)
    pulumi.export("dns_records", fleet.dns_records)
    pulumi.export("cert_sha256", fleet.cert_sha256)
    pulumi.export("hourly_cost_usd", fleet.hourly_cost_usd)


def ssh_hint(settings: Settings) -> str:
    """Who the stack's firewall admits on SSH (said by the bootstrap when SSH stays silent)."""
    if settings.stack.cloud == "ssh":  # no firewall of ours: the bootstrap's generic line
        return ""
    resolved = resolve_cidrs(settings.stack.ssh_allowed_cidrs)
    return ssh_access.describe(settings.stack, pulumi.get_stack(), resolved)


def main() -> None:
    settings = read_settings()
    # What would stop the first `pulumi up` (quota, zone, API, image ...), before anything is
    # created (infra/preflight.py; SYNTHDET_PREFLIGHT=off skips it, as do the test mocks).
    preflight.in_program(settings)
    cloud = CLOUDS[settings.stack.cloud]
    # Stable across runs (the phone keeps working after an update); rotate it with
    # `pulumi up --replace <url-secret urn>`. Letters and digits: a URL path segment.
    url_secret = random.RandomPassword("url-secret", length=32, special=False).result
    if settings.stack.behind_load_balancer:
        export_fleet(settings, cloud.build_fleet(settings, url_secret), url_secret)
    else:
        host = cloud.build_host(settings)
        export_host(settings, host, build_bootstrap(settings, host, url_secret))


if __name__ == "__main__":
    main()
