"""A self-signed certificate for a load balancer (the app accepts any certificate).

Used by both clouds' balancers when no domain is configured: the key and
certificate are made by the tls provider (kept in the state, the key secret),
then each cloud uploads them its own way.
"""

from __future__ import annotations

import pulumi
import pulumi_tls as tls

from serving.certs import fingerprint_sha256

VALIDITY_HOURS = 5 * 365 * 24
RENEW_HOURS = 30 * 24


class SelfSignedCertificate(pulumi.ComponentResource):
    """An RSA 2048 key (what both clouds' balancers take) and a certificate for an address."""

    cert_pem: pulumi.Output[str]
    key_pem: pulumi.Output[str]  # secret
    sha256: pulumi.Output[str | None]

    def __init__(
        self,
        name: str,
        *,
        ip_addresses: pulumi.Input[list[str]] | None = None,
        dns_names: pulumi.Input[list[str]] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("synthdet:index:SelfSignedCertificate", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        key = tls.PrivateKey(f"{name}-tls-key", algorithm="RSA", rsa_bits=2048, opts=child)
        cert = tls.SelfSignedCert(
            f"{name}-tls-cert",
            private_key_pem=key.private_key_pem,
            subject=tls.SelfSignedCertSubjectArgs(common_name="synthdet", organization="synthdet"),
            ip_addresses=ip_addresses,
            dns_names=dns_names,
            validity_period_hours=VALIDITY_HOURS,
            early_renewal_hours=RENEW_HOURS,
            allowed_uses=["key_encipherment", "digital_signature", "server_auth"],
            opts=child,
        )
        self.cert_pem = cert.cert_pem
        self.key_pem = pulumi.Output.secret(key.private_key_pem)
        self.sha256 = cert.cert_pem.apply(lambda pem: fingerprint_sha256(pem.encode()) if pem else None)
        self.register_outputs({"cert_pem": self.cert_pem, "sha256": self.sha256})
