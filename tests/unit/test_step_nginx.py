"""The nginx step on its own: the site it renders, the certificate, reloads, against a fake host."""

from __future__ import annotations

import datetime
import re
from dataclasses import replace
from pathlib import Path

import pytest

from bootstrap.api import DeployOptions
from bootstrap.steps import nginx
from bootstrap.steps.base import CERT_FILE, KEY_FILE, NGINX_SITE, DeployError, HostState, Run
from bootstrap.steps.idle_stop import IdleStop
from bootstrap.steps.layout import Layout
from bootstrap.steps.packages import SystemPackages
from bootstrap.steps.secret import Secret
from bootstrap.steps.step import Done
from serving.certs import make_self_signed
from serving.models import ModelSpec
from serving.settings import ServingSettings
from tests.support.fake_host import SECRET, FakeRunner, make_run

LAYOUT = Layout("synthdet-svc")


def apply(run: Run, state: HostState) -> Done[nginx.Tls]:
    return nginx.apply(
        run, state, SystemPackages(), LAYOUT, Secret(SECRET), IdleStop(run.options.idle_stop_minutes)
    )


def nginx_host(config_ok: bool = True) -> FakeRunner:
    """A host with Debian's nginx installed: its default site enabled, no site of ours yet."""
    host = FakeRunner()
    links = {"/etc/nginx/sites-enabled/default": "/etc/nginx/sites-available/default"}

    def link_site(_m: re.Match[str]) -> tuple[int, str, str]:
        out = ""
        if links.get("/etc/nginx/sites-enabled/synthdet") != "/etc/nginx/sites-available/synthdet":
            links["/etc/nginx/sites-enabled/synthdet"] = "/etc/nginx/sites-available/synthdet"
            out += "CHANGED\n"
        if links.pop("/etc/nginx/sites-enabled/default", None):
            out += "REMOVED_DEFAULT\n"
        return 0, out, ""

    host.on(
        r"^test -s /etc/synthdet/tls/",
        lambda _m: (0 if KEY_FILE in host.files else 1, "", ""),
    )
    host.on(r'^\[ "\$\(readlink /etc/nginx/sites-enabled/synthdet\)"', link_site)
    host.on(r"^mkdir -p /etc/systemd/system/nginx.service.d$").on(r"^systemctl daemon-reload$")
    host.on(r"^rm -f /var/log/nginx/synthdet\.error\.log ")
    host.on(
        r"^nginx -t$", (0, "", "syntax is ok") if config_ok else (1, "", "nginx: [emerg] unknown directive")
    )
    state = {"nginx": "inactive"}

    def restart(_m: re.Match[str]) -> tuple[int, str, str]:
        state["nginx"] = "active"
        return 0, "", ""

    host.on(r"^systemctl is-enabled --quiet nginx").on(r"^systemctl reload nginx$")
    host.on(r"^systemctl restart nginx$", restart)
    host.on(
        r"^systemctl is-active nginx$",
        lambda _m: (0 if state["nginx"] == "active" else 3, state["nginx"], ""),
    )
    return host


def test_nginx_step_installs_the_site_privately_then_reloads_only_on_change() -> None:
    host = nginx_host()
    run, state = make_run(host=host), HostState()
    done = apply(run, state)
    assert done.changed
    # The site holds the URL secret: root's alone; so is the key; the certificate is public.
    assert SECRET in host.text(NGINX_SITE) and host.files[NGINX_SITE].mode == "600"
    assert host.files[KEY_FILE].mode == "600" and host.files[CERT_FILE].mode == "644"
    assert done.output.cert_pem == host.files[CERT_FILE].data
    # Debian's default site (plain HTTP to anyone) is gone, and undeploy will know to restore it.
    assert state.removed_default_site and state.tls_source == "self-signed"
    assert host.ran(r"^nginx -t$") and host.ran(r"^systemctl restart nginx$")
    # Rerun with nginx running and nothing changed: no write, no reload, no restart.
    host.commands.clear()
    assert not apply(run, state).changed
    assert not host.ran(r"mv -f|reload|restart")
    # A change (another port) is a reload, never a restart: connections in flight finish.
    host.commands.clear()
    assert apply(replace(run, options=replace(run.options, public_port=8443)), state).changed
    assert host.ran(r"^systemctl reload nginx$") and not host.ran(r"restart")
    assert "listen 8443 ssl" in host.text(NGINX_SITE)


def test_nginx_step_refuses_a_configuration_nginx_rejects() -> None:
    host = nginx_host(config_ok=False)
    with pytest.raises(DeployError, match="(?s)nginx rejects its configuration.*unknown directive"):
        apply(make_run(host=host), HostState())
    assert not host.ran(r"systemctl (restart|reload) nginx")  # the running nginx keeps its old site


def test_nginx_site_guards_every_path_with_the_secret() -> None:
    run = make_run(models=(ModelSpec("synthdet", Path("a")), ModelSpec("other", Path("b"))))
    site = nginx.render_site(run, SECRET)
    assert "{{" not in site
    assert "listen 443 ssl default_server;" in site
    assert "ssl_protocols       TLSv1.2 TLSv1.3;" in site
    locations = re.findall(r"location (?:= )?(\S+) \{", site)
    assert locations == [
        f"/{SECRET}/predictions/synthdet",
        f"/{SECRET}/predictions/other",
        f"/{SECRET}/ping",
        "/synthdet-viewer",
        "/",
        # Named locations: JSON bodies for the errors nginx makes itself.
        "@synthdet_429",
        "@synthdet_503",
        "@synthdet_404",
        "@synthdet_405",
        "@synthdet_400",
        "@synthdet_413",
    ]
    # Prediction locations: a browser's GET is the viewer page; POST and PUT reach
    # TorchServe as POST with raw bytes; nothing else.
    for name in ("synthdet", "other"):
        block = site.split(f"location = /{SECRET}/predictions/{name} {{")[1].split("\n    }\n")[0]
        assert "if ($request_method ~ ^(GET|HEAD)$) { rewrite ^ /synthdet-viewer last; }" in block
        assert "if ($request_method !~ ^(POST|PUT)$) { return 405; }" in block
        assert "limit_except POST" not in block  # it would refuse the viewer's GET before the rewrite
        assert "proxy_method POST;" in block
        assert "proxy_set_header Content-Type $synthdet_content_type;" in block
        assert f"proxy_pass http://synthdet_torchserve/predictions/{name};" in block
    viewer = site.split("location = /synthdet-viewer {")[1].split("\n    }\n")[0]
    assert "internal;" in viewer and "alias /opt/synthdet/viewer/index.html;" in viewer
    assert "server 127.0.0.1:18080;" in site
    # The body decides, not the label: only a real multipart form passes as it is.
    content_map = site.split("map $http_content_type $synthdet_content_type {")[1].split("}")[0]
    assert '"~*^multipart/form-data" $http_content_type;' in content_map
    assert 'default                  "application/octet-stream";' in content_map
    assert "Content-Security-Policy \"default-src 'none'; script-src 'sha256-" in site
    assert "set_real_ip_from" not in site and "/synthdet-health" not in site
    assert "client_max_body_size 10485760;" in site
    # The catch-all answers 404 after the rate limit (try_files, not return).
    catch_all = site.split("location / {")[1].split("\n    }\n")[0]
    assert "try_files /synthdet-none =404;" in catch_all and "return" not in catch_all
    # The access log format must not contain the URI (it carries the secret).
    log_format = site.split("log_format synthdet")[1].split(";")[0]
    assert "$request" not in log_format.replace("$request_method", "").replace("$request_length", "").replace(
        "$request_time", ""
    )


def test_nginx_behind_a_balancer_counts_phones_and_answers_its_health_check() -> None:
    ranges = ("130.211.0.0/22", "35.191.0.0/16", "198.51.100.80/32")
    site = nginx.render_site(make_run(options=DeployOptions(balancer_cidrs=ranges)), SECRET)
    for cidr in ranges:
        assert f"    set_real_ip_from {cidr};" in site.splitlines()
    assert "real_ip_header X-Forwarded-For;" in site and "real_ip_recursive on;" in site
    # The balancer's health path: no secret in it, for the balancer's addresses only.
    block = site.split("location = /synthdet-health {")[1].split("\n    }\n")[0]
    assert [line.strip() for line in block.strip().splitlines()] == [
        "limit_except GET { deny all; }",
        *(f"allow {cidr};" for cidr in ranges),
        "deny all;",
        # The balancer forwards every path: a phone asking for it gets the usual 404.
        "error_page 403 =404 @synthdet_404;",
        "error_page 502 503 504 =503 @synthdet_503;",
        "proxy_pass http://synthdet_torchserve/ping;",
    ]
    assert SECRET not in block


def test_nginx_site_bounds_overload_and_says_when_to_retry() -> None:
    site = nginx.render_site(make_run(), SECRET)
    block = site.split(f"location = /{SECRET}/predictions/synthdet {{")[1].split("\n    }\n")[0]
    # CPU host, one worker: only the request being computed reaches TorchServe.
    assert "limit_conn synthdet_inflight 1;" in block
    assert "limit_conn synthdet_client_inflight 20;" in block
    assert "limit_req  zone=synthdet_client burst=20 nodelay;" in block
    assert "limit_conn_status 503;" in site and "limit_req_status 429;" in site
    assert "add_header Retry-After $synthdet_retry_after always;" in site
    # Errors nginx makes are JSON; the handler's own 4xx are never replaced.
    assert "proxy_intercept_errors" not in site
    for code in (429, 503, 404, 405, 413):
        named = site.split(f"location @synthdet_{code} {{")[1].split("}\n")[0]
        assert f'return {code} \'{{"code": {code}, "error"' in named
    # Slow clients cannot hold connections open; TLS 1.2+ with forward secrecy only.
    assert "client_header_timeout 10s;" in site and "client_body_timeout 10s;" in site
    assert "ssl_session_tickets off;" in site and "server_tokens off;" in site
    assert "CBC" not in site and "RSA-AES" not in site.replace("ECDHE-RSA-AES", "")


def test_nginx_inflight_cap_follows_the_hardware() -> None:
    assert nginx.inflight_per_model(workers=1, batch_size=4, has_gpu=False) == 1
    assert nginx.inflight_per_model(workers=2, batch_size=4, has_gpu=True) == 16


def test_nginx_site_custom_port_and_limits() -> None:
    options = DeployOptions(public_port=8443, serving=ServingSettings(max_request_bytes=2 << 20))
    site = nginx.render_site(make_run(options=options), SECRET)
    assert "listen 8443 ssl default_server;" in site
    assert f"client_max_body_size {2 << 20};" in site


def test_certificate_reuse_rules() -> None:
    cert, _ = make_self_signed(["203.0.113.7"])
    assert nginx.cert_covers(cert, "203.0.113.7")
    assert not nginx.cert_covers(cert, "198.51.100.1")  # the address changed
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=810)
    assert not nginx.cert_covers(cert, "203.0.113.7", now=later)  # renew before expiry
    dns, _ = make_self_signed(["gpu.example.org"])
    assert nginx.cert_covers(dns, "GPU.example.org")
    assert not nginx.cert_covers(b"not a cert", "203.0.113.7")
