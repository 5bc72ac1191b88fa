"""The AWS balancer's certificate in ACM: DNS-validated for a domain, else self-signed and imported."""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from infra.certificate import SelfSignedCertificate


class AwsCertificate(pulumi.ComponentResource):
    certificate_arn: pulumi.Output[str]
    # The fingerprint users can check (None: an ACM-issued certificate).
    sha256: pulumi.Output[str | None]
    # DNS records the user must create (ACM's validation record) for a domain.
    validation_records: pulumi.Output[list[dict[str, str]]]

    def __init__(
        self,
        name: str,
        *,
        balancer_dns_name: pulumi.Output[str],
        domain: str,
        tags: dict[str, str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("synthdet:index:AwsCertificate", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        if domain:
            requested = aws.acm.Certificate(
                name, domain_name=domain, validation_method="DNS", tags=tags, opts=child
            )
            self.validation_records = requested.domain_validation_options.apply(
                lambda options: [
                    {
                        "name": o["resource_record_name"],
                        "type": o["resource_record_type"],
                        "value": o["resource_record_value"],
                    }
                    for o in (options or [])
                ]
            )
            # Said as soon as ACM has issued the record, while the validation below waits for
            # it: the `dns_records` output only appears once the whole update is done.
            self.validation_records.apply(lambda records: _say_validation_records(domain, records, requested))
            # Waits (up to the provider's 75 min) until the user has created the validation record.
            validated = aws.acm.CertificateValidation(
                f"{name}-validation", certificate_arn=requested.arn, opts=child
            )
            self.certificate_arn = validated.certificate_arn
            self.sha256 = pulumi.Output.from_input(None)
        else:
            # The DNS name goes in the SAN only: it can be longer than a CN may be (64).
            pair = SelfSignedCertificate(name, dns_names=balancer_dns_name.apply(lambda d: [d]), opts=child)
            imported = aws.acm.Certificate(
                name,
                private_key=pair.key_pem,
                certificate_body=pair.cert_pem,
                tags=tags,
                # The listener uses it: import the new one before deleting the old.
                opts=child,
            )
            self.certificate_arn = imported.arn
            self.sha256 = pair.sha256
            self.validation_records = pulumi.Output.from_input([])
        self.register_outputs({"certificate_arn": self.certificate_arn})


def _say_validation_records(domain: str, records: list[dict[str, str]], certificate: pulumi.Resource) -> None:
    for record in records:
        pulumi.log.warn(
            f"create this DNS record now for {domain}'s certificate: {record['name']} {record['type']} "
            f"{record['value']} (pulumi up waits for it, up to 75 minutes; then point {domain} at the "
            "load balancer: the `dns_records` output)",
            resource=certificate,
        )
