"""ACME per stack, under mocks: single cloud hosts ask for a CA's certificate and still open
only SSH and 443; the ssh stack and fleets do not; the keys' values reach the host."""

from __future__ import annotations

import pytest

from infra.config import ConfigError
from tests.infra.harness import BOOTSTRAP_TYPE, ProgramRun, run_program
from tests.infra.test_program import open_rules

# Restated, not imported: what a cloud single host asks for by default.
LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
CLOUD_SINGLE_HOSTS = ["gcp-t4", "aws-t4", "aws-m60", "gcp-cpu", "aws-cpu"]


def bootstrap_options(run: ProgramRun) -> dict:
    return run.one(BOOTSTRAP_TYPE).plain("options")


@pytest.mark.parametrize("stack", CLOUD_SINGLE_HOSTS)
def test_cloud_hosts_get_acme_by_default_and_still_open_only_ssh_and_443(stack, required):
    run = run_program(stack, required(stack))
    options = bootstrap_options(run)
    assert options["acme"] is True
    assert options["acme_directory"] == LETS_ENCRYPT
    assert options.get("acme_email") is None  # unset: no contact
    assert options["public_port"] == 443
    # TLS-ALPN-01 comes in on 443: no port 80, nothing else.
    assert sorted(port for port, _ in open_rules(run)) == [22, 443]


def test_the_ssh_stack_leaves_acme_off(required):
    run = run_program("ssh", required("ssh"))
    assert bootstrap_options(run)["acme"] is False


def test_email_and_directory_reach_the_host(required):
    staging = "https://acme-staging-v02.api.letsencrypt.org/directory"
    overrides = {"synthdet:acmeEmail": "ops@example.org", "synthdet:acmeDirectory": staging}
    options = bootstrap_options(run_program("gcp-t4", required("gcp-t4") | overrides))
    assert (options["acme"], options["acme_email"], options["acme_directory"]) == (
        True,
        "ops@example.org",
        staging,
    )


def test_acme_off_is_todays_self_signed_host(required):
    run = run_program("aws-t4", required("aws-t4") | {"synthdet:acme": False})
    assert bootstrap_options(run)["acme"] is False
    assert sorted(port for port, _ in open_rules(run)) == [22, 443]


def test_acme_with_another_public_port_is_refused_with_the_way_out(required):
    with pytest.raises(ConfigError, match=r"synthdet:acme needs synthdet:publicPort 443.*acme false"):
        run_program("gcp-t4", required("gcp-t4") | {"synthdet:publicPort": 8443})


def test_an_acme_directory_must_be_https(required):
    with pytest.raises(ConfigError, match=r"acmeDirectory: .*not an https:// URL"):
        run_program("gcp-t4", required("gcp-t4") | {"synthdet:acmeDirectory": "http://ca.example/dir"})


def test_the_outputs_say_which_certificate_is_served(required):
    run = run_program("gcp-t4", required("gcp-t4"))
    assert "certificate" in run.outputs
