"""The GCP balancer's certificate: Google-managed for a domain, else self-signed and uploaded."""

from __future__ import annotations

import pulumi
import pulumi_gcp as gcp

from infra.certificate import SelfSignedCertificate


class GcpCertificate(pulumi.ComponentResource):
    certificate_id: pulumi.Output[str]
    # The fingerprint users can check (None: Google-managed, a CA's certificate).
    sha256: pulumi.Output[str | None]

    def __init__(
        self,
        name: str,
        *,
        address: pulumi.Output[str],
        domain: str,
        project: str | None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("synthdet:index:GcpCertificate", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        if domain:
            managed = gcp.compute.ManagedSslCertificate(
                name,
                project=project,
                managed=gcp.compute.ManagedSslCertificateManagedArgs(domains=[domain]),
                opts=child,
            )
            self.certificate_id = managed.id
            self.sha256 = pulumi.Output.from_input(None)
        else:
            pair = SelfSignedCertificate(name, ip_addresses=address.apply(lambda a: [a]), opts=child)
            uploaded = gcp.compute.SSLCertificate(
                name,
                project=project,
                # In use by the proxy: the name prefix lets the new one exist before the
                # old one goes (Pulumi's create-before-delete).
                name_prefix=f"{name}-",
                certificate=pair.cert_pem,
                private_key=pair.key_pem,
                opts=child,
            )
            self.certificate_id = uploaded.id
            self.sha256 = pair.sha256
        self.register_outputs({"certificate_id": self.certificate_id})
