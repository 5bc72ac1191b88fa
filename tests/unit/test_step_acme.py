"""ACME on the deploy side, against fake hosts: the splitter and the site behind it, the client's
files and units, what the deploy's checks trust, and the whole plan's footprint with ACME on.
(The real thing, pebble validating a test host: tests/system/test_acme.py.)"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from bootstrap import acme_client
from bootstrap.api import DeployOptions
from bootstrap.deploy import execute, undeploy_script
from bootstrap.steps import ORDER, acme, packages
from bootstrap.steps.base import CERT_FILE, KEY_FILE, NGINX_SITE, HostState, Run
from bootstrap.steps.nginx import Tls
from bootstrap.steps.venv import Venv
from bootstrap.torch_select import TorchChoice
from serving.certs import fingerprint_sha256, make_self_signed
from tests.support.fake_host import IMAGE_PYTHON, FakeDebianHost, FakeRunner, deploy_run, make_run, run_plan
from tests.support.pebble import make_server_tls
from tests.unit.test_step_footprints import uncovered
from tests.unit.test_step_nginx import apply as apply_nginx
from tests.unit.test_step_nginx import nginx_host

ACME = DeployOptions(acme=True)
STREAM_CONF = "/etc/nginx/modules-enabled/60-synthdet-stream.conf"
ADDRESS = "203.0.113.7"


def splitter_host() -> FakeRunner:
    host = nginx_host()
    host.on(r"^test -d /etc/nginx/modules-enabled$")
    host.on(r"^rm -f (\S+)$", lambda m: (0 if host.files.pop(m.group(1), None) or True else 0, "", ""))
    return host


def test_with_acme_the_public_port_is_the_splitter_and_the_site_sits_behind_it() -> None:
    host = splitter_host()
    done = apply_nginx(make_run(host=host, options=ACME), HostState())
    stream = host.text(STREAM_CONF)
    assert re.search(r"^\s+listen 443;$", stream, re.M)
    assert "ssl_preread on;" in stream and "proxy_protocol on;" in stream
    # Only the CA's TLS-ALPN-01 handshake goes to the client's responder; the rest to the site.
    assert re.search(r'"~\(\^\|,\)acme-tls/1\(,\|\$\)"\s+127\.0\.0\.1:844;', stream)
    assert re.search(r"default\s+127\.0\.0\.1:843;", stream)
    site = host.text(NGINX_SITE)
    assert "listen 127.0.0.1:843 ssl proxy_protocol default_server;" in site
    assert "set_real_ip_from 127.0.0.1;" in site and "real_ip_header proxy_protocol;" in site
    assert not re.search(r"listen 443", site)
    assert "ACME" in done.detail


def test_without_acme_the_site_listens_on_the_public_port_as_before() -> None:
    host = splitter_host()
    apply_nginx(make_run(host=host), HostState())
    site = host.text(NGINX_SITE)
    assert "listen 443 ssl default_server;" in site
    assert "proxy_protocol" not in site
    assert STREAM_CONF not in host.files


def test_turning_acme_off_takes_the_splitter_away() -> None:
    host = splitter_host()
    state = HostState()
    apply_nginx(make_run(host=host, options=ACME), state)
    assert STREAM_CONF in host.files
    done = apply_nginx(make_run(host=host), state)
    assert done.changed and STREAM_CONF not in host.files
    assert host.ran(rf"^rm -f {STREAM_CONF}$")


def short_lived(address: str, hours: float) -> tuple[bytes, bytes]:
    """A certificate for `address` with `hours` left (the CA's are 160 h long)."""
    return acme_client.self_signed(address, hours / 24)


def test_the_acme_clients_certificate_is_kept_by_reruns_and_replaced_when_acme_goes_off() -> None:
    host = splitter_host()
    cert, key = short_lived(ADDRESS, 100)  # well inside the 30 days a self-signed one is renewed at
    host.put(CERT_FILE, cert)
    host.put(KEY_FILE, key, mode="600")
    state = HostState(tls_source="acme")
    done = apply_nginx(make_run(host=host, options=ACME, public_address=ADDRESS), state)
    assert done.output.cert_pem == cert and host.files[CERT_FILE].data == cert
    done = apply_nginx(make_run(host=host, public_address=ADDRESS), state)
    assert done.output.cert_pem != cert and state.tls_source == "self-signed"


def test_with_acme_a_certificate_for_another_address_gives_way_to_a_self_signed_one() -> None:
    host = splitter_host()
    cert, key = short_lived("198.51.100.9", 100)
    host.put(CERT_FILE, cert)
    host.put(KEY_FILE, key, mode="600")
    state = HostState(tls_source="acme")
    done = apply_nginx(make_run(host=host, options=ACME, public_address=ADDRESS), state)
    assert done.output.cert_pem != cert and state.tls_source == "acme"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"public_port": 8443}, "needs public port 443"),
        ({"tls_cert": Path("c.pem"), "tls_key": Path("k.pem")}, "own certificate .* or use ACME"),
        ({"balancer_cidrs": ("130.211.0.0/22",)}, "load balancer"),
        ({"acme_directory": "http://ca.example/dir"}, "https:// URL"),
    ],
)
def test_acme_refuses_what_cannot_work(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DeployOptions(acme=True, **changes)  # type: ignore[arg-type]


def test_acme_options_survive_the_trip_through_pulumi_state_and_boot_json() -> None:
    options = DeployOptions(acme=True, acme_email="ops@example.org", acme_ca=Path("/ca/bundle.pem"))
    assert DeployOptions.from_dict(json.loads(json.dumps(options.to_dict()))) == options


def test_acme_installs_nginxs_stream_module_unless_the_nginx_has_it() -> None:
    facts = make_run(pythons=(IMAGE_PYTHON,)).facts
    have = {"nginx": "1.22", "nftables": "1.0", "python3-venv": "3.11"}
    assert packages.wanted_packages(facts, 17, have) == []
    assert packages.wanted_packages(facts, 17, have, acme=True) == ["libnginx-mod-stream"]
    assert packages.wanted_packages(facts, 17, {**have, "libnginx-mod-stream": "1"}, acme=True) == []
    assert packages.wanted_packages(facts, 17, {**have, "nginx-full": "1"}, acme=True) == []


# ------------------------------------------------------------------ the certificate step

VENV = Venv(TorchChoice(reuse_image=True, build=None, device="cpu", reason="test"), "3.11.2", False)


def client_host(status: dict[str, object] | None, served: bytes, client_rc: int = 0) -> FakeRunner:
    """A host where `systemctl start synthdet-cert.service` leaves `served` and `status` behind,
    as the client would."""
    host = FakeRunner()
    host.on(r"^set -e\n", "CHANGED\n").on(r"^systemctl daemon-reload$")
    host.on(r"^systemctl is-enabled synthdet-cert\.(timer|service)$", (1, "disabled\n", ""))
    host.on(r"^systemctl is-enabled --quiet synthdet-cert\.(timer|service) \|\| systemctl enable --quiet ")
    host.on(r"^systemctl start synthdet-cert\.timer$")
    host.on(
        r"^journalctl -u synthdet-cert\.service ",
        "Traceback ...\nModuleNotFoundError: No module named 'acme'\n",
    )

    def run_client(_m: re.Match[str]) -> tuple[int, str, str]:
        host.put(CERT_FILE, served)
        if status is not None:
            host.put(acme.STATUS_FILE, json.dumps(status), mode="600")
        return client_rc, "", "Job for synthdet-cert.service failed." if client_rc else ""

    host.on(r"^systemctl start synthdet-cert\.service$", run_client)
    return host


def status_for(cert: bytes, **changes: object) -> dict[str, object]:
    return {
        "source": "acme",
        "name": ADDRESS,
        "directory": "https://acme-v02.api.letsencrypt.org/directory",
        "sha256": fingerprint_sha256(cert),
        "issuer": "CN=YE1,O=Let's Encrypt,C=US",
        "not_after": "2026-06-08T04:00:00+00:00",
        "last_error": None,
        **changes,
    }


def certificate_step(host: FakeRunner, options: DeployOptions = ACME) -> acme.ServedCertificate:
    deployed, _ = make_self_signed([ADDRESS])
    run = make_run(host=host, options=options, public_address=ADDRESS)
    return acme.apply(run, HostState(), VENV, Tls(deployed)).output


def test_the_client_is_installed_with_its_units_and_a_certificate_from_the_ca_is_verified() -> None:
    issued, _ = short_lived(ADDRESS, 160)
    host = client_host(status_for(issued), issued)
    served = certificate_step(host, replace(ACME, acme_email="ops@example.org"))
    assert served.public and served.source == "acme" and served.cert_pem == issued
    assert "Let's Encrypt" in served.note and "2026-06-08 04:00 UTC" in served.note
    # What runs on the host is this repository's client, configured for this host.
    assert host.files[acme.CLIENT_FILE].data == Path(acme_client.__file__).read_bytes()
    config = json.loads(host.text(acme.CONFIG_FILE))
    assert config["name"] == ADDRESS and config["email"] == "ops@example.org" and config["ca_file"] is None
    assert (config["alpn_port"], config["check_port"]) == (844, 443)
    assert host.files[acme.CONFIG_FILE].mode == "600"
    acme_client.Config.from_json(host.text(acme.CONFIG_FILE))  # the client can read it
    unit = host.text("/etc/systemd/system/synthdet-cert.service")
    assert "ExecStart=/opt/synthdet/venv/bin/python /opt/synthdet/synthdet-cert.py --config " in unit
    assert "OnCalendar=hourly" in host.text("/etc/systemd/system/synthdet-cert.timer")
    assert host.ran(r"systemctl enable --quiet synthdet-cert\.timer")
    # ...and the service itself runs once at every boot, without the timer's random delay.
    assert host.ran(r"systemctl enable --quiet synthdet-cert\.service")
    assert "WantedBy=multi-user.target" in unit


def test_a_private_cas_certificates_go_to_the_host_and_are_what_the_checks_trust(tmp_path: Path) -> None:
    bundle, _, _ = make_server_tls("10.203.1.1", tmp_path)  # a CA certificate
    issued, _ = short_lived(ADDRESS, 160)
    served = certificate_step(client_host(status_for(issued), issued), replace(ACME, acme_ca=bundle))
    assert served.ca_file == bundle
    context = served.client_context()
    assert context.check_hostname and len(context.get_ca_certs()) == 1


def test_when_the_ca_gave_nothing_the_deploy_goes_on_self_signed_and_says_why() -> None:
    fallback, _ = short_lived(ADDRESS, 24 * 365)
    reason = "cannot reach the ACME server https://10.203.1.1:14000/dir: [Errno 111] Connection refused"
    status = status_for(fallback, source="self-signed", last_error=reason)
    served = certificate_step(client_host(status, fallback, client_rc=1))
    assert not served.public and served.source == "self-signed" and served.note == reason
    # The checks pin what is served: only that certificate.
    assert served.client_context().check_hostname is False


def test_a_client_that_crashed_is_reported_with_its_last_line() -> None:
    deployed, _ = short_lived(ADDRESS, 1000)
    served = certificate_step(client_host(None, deployed, client_rc=1))
    assert not served.public
    assert "did not finish (ModuleNotFoundError: No module named 'acme')" in served.note


def test_a_status_about_another_certificate_is_not_believed() -> None:
    issued, _ = short_lived(ADDRESS, 160)
    other, _ = short_lived(ADDRESS, 160)
    served = certificate_step(client_host(status_for(other), issued))
    assert not served.public


def test_acme_off_removes_the_timer_of_an_earlier_deploy() -> None:
    host = FakeRunner()
    host.put("/etc/systemd/system/synthdet-cert.timer", "[Timer]\n")
    host.on(r"^systemctl disable --now synthdet-cert\.timer ")
    deployed, _ = make_self_signed([ADDRESS])
    done = acme.apply(make_run(host=host), HostState(tls_source="self-signed"), VENV, Tls(deployed))
    assert done.changed and not done.output.public and done.output.cert_pem == deployed
    removal = host.ran(r"^systemctl disable --now synthdet-cert\.timer ")[0]
    assert "/etc/systemd/system/synthdet-cert.service" in removal and acme.CLIENT_FILE in removal


def test_the_whole_plan_with_acme_creates_only_what_its_steps_declare(tmp_path: Path) -> None:
    host = FakeDebianHost(dpkg_installed=("nginx", "nftables", "python3-venv"))
    host.on(r"^test -d /etc/nginx/modules-enabled$")
    # Without the health check: the fake "nginx" serves on a port of its own, and ACME is 443's.
    steps = tuple(step for step in ORDER if step.name != "health")
    try:
        run: Run = deploy_run(host, tmp_path)
        run = replace(run, options=replace(run.options, acme=True, public_port=443))
        state = HostState()
        created = run_plan(host, run, state, steps)
        assert "synthdet-cert.timer" in created.units
        assert "libnginx-mod-stream" in created.packages
        assert {STREAM_CONF, acme.CLIENT_FILE, acme.CONFIG_FILE} <= created.paths
        assert uncovered(created, steps, state) == []
        script = undeploy_script(state)
        assert "systemctl disable --now synthdet-cert.timer" in script and STREAM_CONF in script
        # A rerun changes nothing (the client is asked again; it reuses what it has).
        _, reports = execute(run, HostState.from_json(host.text("/etc/synthdet/deploy-state.json")), steps)
        assert [r.name for r in reports if r.changed] == []
    finally:
        host.close()
