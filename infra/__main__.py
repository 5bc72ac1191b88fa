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

from infra import aws, existing, gcp  # noqa: E402
from infra.bootstrap_resource import Bootstrap, BootstrapArgs  # noqa: E402
from infra.config import Settings, read_settings  # noqa: E402
from infra.fleet import Fleet  # noqa: E402
from infra.host import Host  # noqa: E402
from infra.pricing import load_prices  # noqa: E402
from serving.endpoint import prediction_url  # noqa: E402
from serving.models import DEFAULT_MODEL_NAME  # noqa: E402
from synthdet.qr import render_terminal  # noqa: E402

# `synthdet:cloud` -> the module with build_host(settings) and build_fleet(settings, secret).
CLOUDS: dict[str, ModuleType] = {"gcp": gcp, "aws": aws, "ssh": existing}


def build_bootstrap(settings: Settings, host: Host, url_secret: pulumi.Output[str]) -> Bootstrap:
    return Bootstrap(
        "bootstrap",
        BootstrapArgs(
            host=host.public_ip,
            port=host.ssh_port,
            user=host.ssh_user,
            private_key=host.ssh_private_key,
            instance_id=host.instance_id,
            known_hosts=host.known_hosts,
            models=settings.stack.model_specs(),
            options=settings.stack.deploy_options(),
            url_secret=url_secret,
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
    pulumi.export("public_ip", host.public_ip)
    pulumi.export("instance_id", host.instance_id)
    port = f" -p {host.ssh_port}" if host.ssh_port != 22 else ""
    pulumi.export(
        "ssh_command",
        host.public_ip.apply(lambda ip: f"ssh -i {host.ssh_key_path}{port} {host.ssh_user}@{ip}"),
    )
    pulumi.export("ssh_private_key", pulumi.Output.secret(host.ssh_private_key))
    pulumi.export("cert_sha256", bootstrap.cert_sha256)
    pulumi.export("host_facts", bootstrap.host_facts)
    pulumi.export("hourly_cost_usd", host.hourly_cost_usd)


def export_fleet(settings: Settings, fleet: Fleet, url_secret: pulumi.Output[str]) -> None:
    names = [m.name for m in settings.stack.model_specs()]
    endpoints = pulumi.Output.all(fleet.base_url, url_secret).apply(
        lambda v: {name: prediction_url(v[0], name, v[1]) for name in names}
    )
    export_endpoint(settings, endpoints)
    low, high = settings.stack.replica_range
    pulumi.export("public_ip", fleet.public_ip)
    pulumi.export("load_balancer_url", fleet.base_url)
    pulumi.export("instance_id", fleet.group_id)
    pulumi.export("replicas", {"min": low, "max": high})
    pulumi.export("bucket", fleet.bucket)
    pulumi.export("dns_records", fleet.dns_records)
    pulumi.export("cert_sha256", fleet.cert_sha256)
    pulumi.export("hourly_cost_usd", fleet.hourly_cost_usd)


def main() -> None:
    settings = read_settings()
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
