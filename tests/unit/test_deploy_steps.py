"""What the steps write and send, checked without a host.

Rendering (templates, scripts, pip arguments) is checked as text; the steps
themselves run against `tests.support.fake_host.FakeRunner`: canned facts and
answers in, the commands they send and the files they place out.
"""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from bootstrap.api import DeployOptions, DeployResult, PipSource
from bootstrap.deploy import apply_and_record, check_privileges, remove_account_script, undeploy_script
from bootstrap.facts import HostFacts, OsInfo, PythonProbe
from bootstrap.runner import CommandError
from bootstrap.steps import STEPS, firewall, health, layout, nginx, packages, secret, torchserve, venv
from bootstrap.steps.base import (
    CERT_FILE,
    KEY_FILE,
    NGINX_SITE,
    SECRET_FILE,
    SERVICE_USER,
    STATE_FILE,
    Context,
    DeployError,
    HostState,
    render_template,
)
from bootstrap.torch_select import CUDA_BUILDS, TorchChoice
from serving.certs import make_self_signed
from serving.models import ModelSpec
from tests.support.fake_host import FakeRunner

SECRET = "Zr3_kP0-qX7mW2nB9vL4tY8sD1fH6jGc"


def make_ctx(
    models: tuple[ModelSpec, ...] = (ModelSpec("synthdet", Path("a.pth")),),
    options: DeployOptions | None = None,
    gpus: tuple = (),
    pythons: tuple[PythonProbe, ...] = (),
    host: FakeRunner | None = None,
) -> Context:
    facts = HostFacts(OsInfo("debian", "12", "Debian 12"), "x86_64", 2, 4000, gpus, pythons)
    ctx = Context(
        conn=host or FakeRunner(),
        facts=facts,
        models=models,
        options=options or DeployOptions(),
        public_address="203.0.113.7",
        state=HostState(),
    )
    ctx.secret = SECRET
    return ctx


def test_steps_run_in_dependency_order() -> None:
    names = [step.NAME for step in STEPS]
    assert names.index("packages") < names.index("venv") < names.index("torchserve")
    assert names.index("url-secret") < names.index("nginx") < names.index("health")
    assert names[-1] == "health"


# -------------------------------------------------------------------- nginx
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
    ctx = make_ctx(host=host)
    assert nginx.apply(ctx).changed
    # The site holds the URL secret: root's alone; so is the key; the certificate is public.
    assert SECRET in host.text(NGINX_SITE) and host.files[NGINX_SITE].mode == "600"
    assert host.files[KEY_FILE].mode == "600" and host.files[CERT_FILE].mode == "644"
    assert ctx.cert_pem == host.files[CERT_FILE].data
    # Debian's default site (plain HTTP to anyone) is gone, and undeploy will know to restore it.
    assert ctx.state.removed_default_site and ctx.state.tls_source == "self-signed"
    assert host.ran(r"^nginx -t$") and host.ran(r"^systemctl restart nginx$")
    # Rerun with nginx running and nothing changed: no write, no reload, no restart.
    host.commands.clear()
    assert not nginx.apply(ctx).changed
    assert not host.ran(r"mv -f|reload|restart")
    # A change (another port) is a reload, never a restart: connections in flight finish.
    host.commands.clear()
    ctx.options = DeployOptions(public_port=8443)
    assert nginx.apply(ctx).changed
    assert host.ran(r"^systemctl reload nginx$") and not host.ran(r"restart")
    assert "listen 8443 ssl" in host.text(NGINX_SITE)


def test_nginx_step_refuses_a_configuration_nginx_rejects() -> None:
    host = nginx_host(config_ok=False)
    with pytest.raises(DeployError, match="(?s)nginx rejects its configuration.*unknown directive"):
        nginx.apply(make_ctx(host=host))
    assert not host.ran(r"systemctl (restart|reload) nginx")  # the running nginx keeps its old site


def test_nginx_site_guards_every_path_with_the_secret() -> None:
    ctx = make_ctx(models=(ModelSpec("synthdet", Path("a")), ModelSpec("other", Path("b"))))
    site = nginx.render_site(ctx)
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
    site = nginx.render_site(make_ctx(options=DeployOptions(balancer_cidrs=ranges)))
    for cidr in ranges:
        assert f"    set_real_ip_from {cidr};" in site.splitlines()
    assert "real_ip_header X-Forwarded-For;" in site and "real_ip_recursive on;" in site
    # The balancer's health path: no secret in it, for the balancer's addresses only.
    block = site.split("location = /synthdet-health {")[1].split("\n    }\n")[0]
    assert [line.strip() for line in block.strip().splitlines()] == [
        "limit_except GET { deny all; }",
        *(f"allow {cidr};" for cidr in ranges),
        "deny all;",
        "proxy_pass http://synthdet_torchserve/ping;",
    ]
    assert SECRET not in block


def test_nginx_site_bounds_overload_and_says_when_to_retry() -> None:
    site = nginx.render_site(make_ctx())
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
    from serving.settings import ServingSettings

    options = DeployOptions(public_port=8443, serving=ServingSettings(max_request_bytes=2 << 20))
    site = nginx.render_site(make_ctx(options=options))
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


# ---------------------------------------------------------------- TorchServe
def test_unit_runs_java_directly_as_the_service_account_behind_the_firewall() -> None:
    ctx = make_ctx()
    ctx.python_version = "3.11.2"
    unit = torchserve.render_unit(ctx, "/usr/bin/java")
    assert "{{" not in unit
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    site = "/opt/synthdet/venv/lib/python3.11/site-packages"
    # No `torchserve` wrapper: it would put "." first on the class path.
    assert exec_start.startswith(f"ExecStart=/usr/bin/java -Dmodel_server_home={site} -Xmx512m ")
    assert f" -cp {site}/ts/frontend/* org.pytorch.serve.ModelServer " in exec_start
    assert "--python /opt/synthdet/venv/bin/python -f /etc/synthdet/config.properties" in exec_start
    assert ".:" not in exec_start
    for line in (
        f"User={SERVICE_USER}",
        "Requires=synthdet-firewall.service",
        "Restart=always",
        "RestartSec=2",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        # Its working directory and home are not among what it may write.
        "WorkingDirectory=/var/lib/synthdet",
        "ReadWritePaths=/var/lib/synthdet/tmp /var/log/synthdet",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "RestrictSUIDSGID=yes",
        "Environment=TMPDIR=/var/lib/synthdet/tmp",
        "Environment=LOG_LOCATION=/var/log/synthdet",
        "Environment=TS_DECODE_INPUT_REQUEST=false",
        "Environment=PYTHONNOUSERSITE=1",
        "WantedBy=multi-user.target",
        "StartLimitIntervalSec=0",
    ):
        assert line in unit.splitlines(), line
    # The GPU's device nodes stay visible on GPU hosts.
    gpu = make_ctx(gpus=(SimpleNamespace(),))
    gpu.python_version = "3.10.12"
    gpu_unit = torchserve.render_unit(gpu, "/usr/bin/java")
    assert "PrivateDevices=no" in gpu_unit.splitlines()
    assert "/opt/synthdet/venv/lib/python3.10/site-packages" in gpu_unit


def test_torchserve_config_listens_on_loopback_and_enables_model_reload() -> None:
    config = torchserve.render_config(make_ctx(), ["synthdet"])
    props = dict(line.split("=", 1) for line in config.splitlines() if "=" in line)
    for key in ("inference_address", "management_address", "metrics_address"):
        assert props[key].startswith("http://127.0.0.1:"), props[key]
    assert props["load_models"] == "synthdet=synthdet.mar"
    assert props["enable_model_api"] == "true"
    assert props["disable_token_authorization"] == "true"


def test_workers_ready_in_words_people_read() -> None:
    ready = '[{"modelName": "synthdet", "workers": [{"id": "9000", "status": "READY"}]}]'
    loading = '[{"workers": [{"status": "READY"}, {"status": "UNLOADING"}, {"status": "UNLOADING"}]}]'
    assert health.workers_ready(ready) == (True, "1 worker ready")
    # TorchServe says UNLOADING for a worker still loading its model: say "loading".
    assert health.workers_ready(loading) == (False, "1 worker ready, 2 workers loading")
    assert health.workers_ready('[{"workers": []}]') == (False, "no workers yet")
    assert health.workers_ready("<html>")[0] is False


# -------------------------------------------------------------------- URLs
WELL_FORMED = re.compile(r"^https://[A-Za-z0-9.\-\[\]:]+(:\d+)?(/[A-Za-z0-9_\-.~]+)+$")


@pytest.mark.parametrize(
    ("address", "port", "expected"),
    [
        ("203.0.113.7", 443, f"https://203.0.113.7/{SECRET}/predictions/synthdet"),
        ("203.0.113.7", 8443, f"https://203.0.113.7:8443/{SECRET}/predictions/synthdet"),
        ("gpu.example.org", 443, f"https://gpu.example.org/{SECRET}/predictions/synthdet"),
        ("2001:db8::1", 443, f"https://[2001:db8::1]/{SECRET}/predictions/synthdet"),
    ],
)
def test_public_urls(address: str, port: int, expected: str) -> None:
    ctx = make_ctx(options=DeployOptions(public_port=port))
    ctx.public_address = address
    url = health.model_url(ctx, "synthdet")
    assert url == expected
    assert WELL_FORMED.match(url)  # plain characters only: .NET's IsWellFormedUriString


def test_secrets() -> None:
    generated = secret.new_secret()
    assert secret.SECRET_PATTERN.match(generated) and len(generated) == 32
    assert secret.check_secret(SECRET) == SECRET
    for bad in ("short", "has/slash" * 3, "spaces are bad here!", "ü" * 20):
        with pytest.raises(DeployError, match="16-128 characters"):
            secret.check_secret(bad)


# ------------------------------------------------------------ packages, venv
@pytest.mark.parametrize(
    ("text", "major"),
    [
        ('openjdk version "17.0.13" 2024-10-15\nOpenJDK Runtime Environment', 17),
        ('java version "1.8.0_392"', 8),
        ('openjdk version "21" 2023-09-19', 21),
        ("bash: java: command not found", None),
    ],
)
def test_java_version(text: str, major: int | None) -> None:
    assert packages.parse_java_version(text) == major


def dpkg_status(*installed: str) -> str:
    return "\n\n".join(f"Package: {name}\nStatus: install ok installed\nVersion: 1.0" for name in installed)


JAVA_17 = 'openjdk version "17.0.13" 2024-10-15\n'


@pytest.mark.parametrize(
    ("java", "dpkg", "allowed", "apt_rc", "outcome"),
    [
        # (java -version, dpkg -s, may install, apt's exit) -> what the step does
        ((0, "", JAVA_17), dpkg_status("nginx", "nftables"), True, 0, "nothing to do"),
        (
            (127, "", "java: not found"),
            dpkg_status("nginx"),
            True,
            0,
            "installs openjdk-17-jre-headless nftables",
        ),
        ((0, "", JAVA_17), "", False, 0, "refuses: missing system packages: nginx, nftables"),
        ((0, "", JAVA_17), dpkg_status("nftables"), True, 100, "fails: apt-get could not install nginx"),
    ],
    ids=["all there", "java and nftables missing", "not allowed to install", "apt fails"],
)
def test_packages_step(
    java: tuple[int, str, str], dpkg: str, allowed: bool, apt_rc: int, outcome: str
) -> None:
    host = FakeRunner().on(r"^java -version$", java).on(r"^dpkg -s ", (0 if dpkg else 1, dpkg, ""))
    host.on(r"apt-get .* install ", (apt_rc, "", "E: Unable to locate package" if apt_rc else ""))
    python = PythonProbe("/usr/bin/python3", "3.11.2", has_venv=True)
    ctx = make_ctx(host=host, options=DeployOptions(install_system_packages=allowed), pythons=(python,))
    verb, _, detail = outcome.partition(" ")
    if verb in ("refuses:", "fails:"):
        with pytest.raises(DeployError, match=re.escape(detail)):
            packages.apply(ctx)
        assert ctx.state.apt_installed == []
        return
    result = packages.apply(ctx)
    installs = host.ran(r"apt-get .* install ")
    if verb == "nothing":
        assert not result.changed and not installs
        return
    # One apt run, non-interactive, waiting for apt's lock instead of failing on it.
    (command,) = installs
    assert "DEBIAN_FRONTEND=noninteractive" in command and "DPkg::Lock::Timeout=" in command
    assert command.endswith("--no-install-recommends " + detail)
    assert result.changed and ctx.state.apt_installed == sorted(detail.split())  # undeploy purges these


def test_wanted_packages() -> None:
    with_venv = PythonProbe("/usr/bin/python3", "3.11.2", has_venv=True)
    ctx = make_ctx(pythons=(with_venv,))
    assert packages.wanted_packages(ctx, 17, {"nginx": "1.22", "nftables": "1.0"}) == []
    assert packages.wanted_packages(ctx, 8, {}) == ["openjdk-17-jre-headless", "nginx", "nftables"]
    bare = make_ctx(pythons=(PythonProbe("/usr/bin/python3", "3.11.2", has_venv=False),))
    assert packages.wanted_packages(bare, 17, {"nginx-light": "1", "nftables": "1"}) == ["python3-venv"]


def test_pip_args() -> None:
    assert venv.pip_args(PipSource()) == []
    assert venv.pip_args(PipSource(index_url="https://mirror/simple")) == [
        "--index-url",
        "https://mirror/simple",
    ]
    # A wheelhouse alone: no index at all (a locked-down host must not try PyPI).
    assert venv.pip_args(PipSource(find_links="http://10.0.0.1:8000/", trusted_hosts=("10.0.0.1",))) == [
        "--no-index",
        "--find-links",
        "http://10.0.0.1:8000/",
        "--trusted-host",
        "10.0.0.1",
    ]


def test_torch_install_args() -> None:
    cu126 = next(b for b in CUDA_BUILDS if b.flavor == "cu126")
    choice = TorchChoice(False, "cuda", cu126, "M60")
    ctx = make_ctx()
    assert venv.torch_install_args(ctx, choice) == [
        "torch",
        "torchvision",
        "--index-url",
        "https://download.pytorch.org/whl/cu126",
    ]
    pinned = make_ctx(options=DeployOptions(torch_version="2.7.1", torch_index_url="http://m/whl"))
    assert venv.torch_install_args(pinned, choice) == [
        "torch==2.7.1",
        "torchvision==0.22.1",
        "--index-url",
        "http://m/whl/cu126",
    ]
    # A wheelhouse given and no torch index: torch must come from the wheelhouse.
    closed = make_ctx(options=DeployOptions(pip=PipSource(find_links="/wheels")))
    assert venv.torch_install_args(closed, choice)[:3] == ["torch", "torchvision", "--no-index"]


def test_venv_stamp_changes_with_inputs() -> None:
    ctx = make_ctx()
    reuse = TorchChoice(True, "cpu", None, "image torch")
    base = venv.stamp_for(ctx, reuse, "/usr/bin/python3", "torchserve==0.12.0\n")
    assert base == venv.stamp_for(ctx, reuse, "/usr/bin/python3", "torchserve==0.12.0\n")
    assert base != venv.stamp_for(ctx, reuse, "/usr/bin/python3", "torchserve==0.13.0\n")
    assert base != venv.stamp_for(ctx, reuse, "/opt/conda/bin/python3", "torchserve==0.12.0\n")


# ----------------------------------------------------------- layout, undeploy
NO_ACCOUNT = ""
SYSTEM_ACCOUNT = (
    f"{SERVICE_USER}:x:998:998:SynthDet TorchServe:/var/lib/synthdet:/usr/sbin/nologin\n{SERVICE_USER}\n"
)
# What GCP's guest agent makes of the stacks' login (named like the project).
GCP_LOGIN = (
    f"{SERVICE_USER}:x:1000:1001::/home/{SERVICE_USER}:/bin/bash\n{SERVICE_USER} adm video google-sudoers\n"
)


def layout_host(getent: str) -> FakeRunner:
    return FakeRunner().on(r"^getent passwd", getent).on(r"^useradd ").on(r"^set -e\n", "CHANGED\n")


# A system account of that name that some other package made: used, never recorded as ours.
FOREIGN_SYSTEM_ACCOUNT = SYSTEM_ACCOUNT.replace("SynthDet TorchServe", "")


@pytest.mark.parametrize(
    ("getent", "creates", "ours"),
    [(NO_ACCOUNT, True, True), (SYSTEM_ACCOUNT, False, True), (FOREIGN_SYSTEM_ACCOUNT, False, False)],
    ids=["no account yet", "one a deploy made, its record lost", "a system account of another's"],
)
def test_layout_creates_the_service_account_only_when_missing(getent: str, creates: bool, ours: bool) -> None:
    host = layout_host(getent)
    ctx = make_ctx(host=host)
    result = layout.apply(ctx)
    assert result.changed
    useradd = host.ran(r"^useradd ")
    assert bool(useradd) is creates
    if creates:
        assert "--system" in useradd[0] and "--shell /usr/sbin/nologin" in useradd[0]
        assert useradd[0].endswith(f" {SERVICE_USER}") and "--groups" not in useradd[0]
    # Recorded only when a deploy made it: undeploy removes exactly those.
    assert ctx.state.created_users == ([SERVICE_USER] if ours else [])
    directories = host.ran(r"^set -e\n")[0]
    # Its home and working directory are root's; it writes its tmp and log dirs only.
    assert (
        f"'root:{SERVICE_USER} 750' ]; then\n  install -d -o root -g {SERVICE_USER} -m 750 /var/lib/synthdet"
        in (directories)
    )
    assert f"install -d -o {SERVICE_USER} -g {SERVICE_USER} -m 700 /var/lib/synthdet/tmp" in directories
    assert "-name '.*.part-*'" in directories  # partial uploads are swept
    # ... and ours among the system's files (the nginx site holds the URL secret).
    assert "find /etc/nginx/sites-available /etc/systemd/system" in directories
    assert "-name '.synthdet*.part-*'" in directories
    from bootstrap.steps.base import NGINX_SITE, UNIT_FILE
    from bootstrap.steps.firewall import FIREWALL_UNIT_FILE
    from bootstrap.steps.nginx import NGINX_DROPIN

    for placed in (NGINX_SITE, UNIT_FILE, FIREWALL_UNIT_FILE, NGINX_DROPIN):
        folder, name = placed.rsplit("/", 1)
        assert folder in layout.SHARED_SYSTEM_DIRS and name.startswith("synthdet")


@pytest.mark.parametrize(
    ("passwd", "why"),
    [
        (GCP_LOGIN, "uid 1000 is a person's"),
        (f"{SERVICE_USER}:x:1001:1001::/home/x:/usr/sbin/nologin\n{SERVICE_USER}\n", "its home is /home/x"),
        (f"{SERVICE_USER}:x:999:999::/var/lib/x:/bin/sh\n{SERVICE_USER}\n", "login shell (/bin/sh)"),
        (f"{SERVICE_USER}:x:999:999::/var/lib/x:/usr/sbin/nologin\n{SERVICE_USER} sudo\n", "groups sudo"),
        (f"{SERVICE_USER}:x:0:0::/root:/bin/bash\n{SERVICE_USER}\n", "it is root"),
    ],
    ids=["gcp login", "home under /home", "login shell", "admin group", "root"],
)
def test_layout_refuses_an_account_that_belongs_to_somebody(passwd: str, why: str) -> None:
    host = layout_host(passwd)
    ctx = make_ctx(host=host)
    with pytest.raises(DeployError, match=rf"(?s)already exists.*{re.escape(why)}.*nothing was changed"):
        layout.apply(ctx)
    # It stopped before changing anything: no account, no directory, nothing recorded.
    assert host.commands == [host.commands[0]] and host.commands[0].startswith("getent passwd")
    assert ctx.state.created_users == []


def test_a_step_that_fails_half_way_still_records_what_it_did() -> None:
    """useradd ran, then the directories failed: the state on the host names the account."""
    host = layout_host(NO_ACCOUNT).on(r"^set -e\n", (1, "", "install: No space left on device\n"))
    ctx = make_ctx(host=host)
    with pytest.raises(CommandError, match="No space left"):
        apply_and_record(layout, ctx)
    assert host.ran(r"^useradd ")
    assert json.loads(host.text(STATE_FILE))["created_users"] == [SERVICE_USER]
    assert host.files[STATE_FILE].mode == "600"


def test_undeploy_removes_only_what_deploy_added() -> None:
    nothing_installed = undeploy_script(HostState())
    assert "systemctl disable --now synthdet-torchserve.service" in nothing_installed
    assert "systemctl disable --now synthdet-firewall.service" in nothing_installed
    assert "nft delete table inet synthdet" in nothing_installed
    assert "rm -rf /opt/synthdet /var/lib/synthdet /var/log/synthdet /etc/synthdet" in nothing_installed
    assert "apt-get" not in nothing_installed and "userdel" not in nothing_installed
    assert "sites-enabled/default" not in nothing_installed
    full = undeploy_script(
        HostState(apt_installed=["nginx"], removed_default_site=True, created_users=[SERVICE_USER])
    )
    assert "purge -y -q nginx" in full and f"userdel {SERVICE_USER}" in full
    assert "ln -sfn /etc/nginx/sites-available/default" in full
    assert "purge" not in undeploy_script(HostState(apt_installed=["nginx"]), keep_packages=True)


def test_an_old_deploy_state_still_names_the_account_it_created() -> None:
    assert HostState.from_json('{"created_user": true}').created_users == ["synthdet"]
    assert HostState.from_json('{"created_user": false}').created_users == []


@pytest.mark.parametrize(
    ("passwd", "removed"),
    [
        (f"{SERVICE_USER}:x:998:998::/var/lib/synthdet:/usr/sbin/nologin", True),
        (f"{SERVICE_USER}:x:1000:1000::/home/{SERVICE_USER}:/bin/bash", False),
        (f"{SERVICE_USER}:x:997:997::/var/lib/x:/bin/bash", False),
        ("", False),
    ],
    ids=["system account", "a login now", "a shell now", "gone"],
)
def test_undeploy_never_deletes_a_login_even_one_it_created(passwd: str, removed: bool) -> None:
    """The account guard is shell: run it against a fake getent and userdel."""
    import subprocess

    script = remove_account_script(SERVICE_USER)
    fake = f"getent() {{ [ -n '{passwd}' ] && echo '{passwd}'; }}; userdel() {{ echo USERDEL \"$1\"; }}; "
    out = subprocess.run(["sh", "-c", fake + script], capture_output=True, text=True, check=True)
    assert (f"USERDEL {SERVICE_USER}" in out.stdout) is removed
    if passwd and not removed:
        assert "not a system account" in out.stderr


@pytest.mark.parametrize(
    ("stderr", "why"),
    [
        ("sudo: a password is required\n", "asks for a password"),
        ("synthdet is not in the sudoers file.  This incident will be reported.\n", "may not use sudo"),
        ("sh: 1: sudo: not found\n", "sudo is not installed"),
    ],
)
def test_a_login_without_passwordless_sudo_is_refused_before_anything_changes(stderr: str, why: str) -> None:
    host = FakeRunner(root=False).on(r"^true$", (1, "", stderr))
    with pytest.raises(DeployError, match=rf"(?s){why}.*NOPASSWD.*Nothing was changed"):
        check_privileges(host)
    assert host.commands == ["true"] and host.sudo_used == [True]
    check_privileges(FakeRunner(root=False).on(r"^true$"))  # passwordless sudo: fine
    check_privileges(FakeRunner(root=True))  # root: nothing to check, nothing sent


# ------------------------------------------------------------------ firewall
NGINX_CONF = "user www-data;\nworker_processes auto;\n"


def firewall_host() -> FakeRunner:
    host = FakeRunner().on(r"^command -v nft$", "/usr/sbin/nft\n").on(r"^id -u www-data$", "33\n")
    host.on(r"^systemctl (daemon-reload|restart|is-enabled)").on(
        r"^systemctl is-active", (3, "inactive\n", "")
    )
    host.on(r"^nft list table inet synthdet$", (1, "", "Error: No such file or directory"))
    host.put("/etc/nginx/nginx.conf", NGINX_CONF)
    return host


def test_firewall_rules_admit_root_and_nginx_on_every_torchserve_port() -> None:
    rules = firewall.render_rules([0, 33])
    assert rules.splitlines()[3:5] == ["table inet synthdet", "delete table inet synthdet"]  # atomic reload
    (rule,) = [line.strip() for line in rules.splitlines() if "reject" in line]
    assert rule == (
        'oifname "lo" tcp dport { 7070, 7071, 18080, 18081, 18082 } meta skuid != { 0, 33 } '
        "counter reject with tcp reset"
    )


def test_firewall_step_installs_rules_and_their_unit_then_is_a_no_op() -> None:
    host = firewall_host()
    ctx = make_ctx(host=host)
    assert firewall.apply(ctx).changed
    assert "meta skuid != { 0, 33 }" in host.text("/etc/synthdet/nftables.conf")
    assert host.files["/etc/synthdet/nftables.conf"].mode == "600"
    unit = host.text("/etc/systemd/system/synthdet-firewall.service")
    assert "ExecStart=nft -f /etc/synthdet/nftables.conf" in unit
    assert "ExecStop=nft delete table inet synthdet" in unit
    assert "Before=network-pre.target synthdet-torchserve.service" in unit
    assert "After=nftables.service" in unit and "PartOf=nftables.service" in unit
    assert host.ran(r"^systemctl restart synthdet-firewall.service$")
    # Rerun with the rules active: nothing written, nothing restarted.
    host.commands.clear()
    host.on(r"^systemctl is-active", "active\n").on(
        r"^nft list table inet synthdet$", "table inet synthdet {}\n"
    )
    assert not firewall.apply(ctx).changed
    assert not host.ran(r"restart|mv -f") and not host.ran(r"daemon-reload")
    # Somebody flushed the ruleset; the unit still says active: the rerun loads the rules again.
    host.commands.clear()
    host.on(r"^nft list table inet synthdet$", (1, "", "Error: No such file or directory"))
    assert firewall.apply(ctx).changed
    assert host.ran(r"^systemctl restart synthdet-firewall.service$")


def test_firewall_step_says_what_is_missing() -> None:
    host = FakeRunner().on(r"^command -v nft$", (1, "", ""))
    with pytest.raises(DeployError, match="nftables"):
        firewall.apply(make_ctx(host=host))
    broken = firewall_host().on(r"^id -u www-data$", (1, "", "id: 'www-data': no such user"))
    with pytest.raises(DeployError, match="www-data"):
        firewall.apply(make_ctx(host=broken))


# ------------------------------------------------------------- TorchServe
class TorchServeHost(FakeRunner):
    """systemd and TorchServe's management API as the torchserve step sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.active = False
        self.registered: list[str] = []
        self.on(r"^command -v java$", "/usr/bin/java\n").on(r"^systemctl (daemon-reload|enable) ")
        self.on(r"^systemctl daemon-reload$").on(r"^systemctl is-enabled ", "enabled\n")
        self.on(
            r"^systemctl is-active ", lambda _m: (0, "active", "") if self.active else (3, "inactive", "")
        )
        self.on(r"^systemctl restart synthdet-torchserve.service$", self._restart)
        self.on(r"^python3 - (GET|DELETE) http://127\.0\.0\.1:\d+(\S*) ", self._management)
        self.on(r"^python3 - (\S+) '?http://127\.0\.0\.1:\d+/models\?url=(\w+)\.mar", self._reload)
        self.on(r"^rm -f /var/lib/synthdet/model-store/")

    def _restart(self, _m: re.Match[str]) -> tuple[int, str, str]:
        self.active = True
        return 0, "", ""

    def _management(self, m: re.Match[str]) -> tuple[int, str, str]:
        if m.group(1) == "DELETE":
            self.registered.remove(m.group(2).rsplit("/", 1)[1])
            return 0, json.dumps({"status": 200, "body": "{}"}), ""
        body = json.dumps({"models": [{"modelName": name} for name in self.registered]})
        return 0, json.dumps({"status": 200, "body": body}), ""

    def _reload(self, m: re.Match[str]) -> tuple[int, str, str]:
        if m.group(2) not in self.registered:
            self.registered.append(m.group(2))
        return 0, json.dumps({"status": 200, "body": "{}"}), ""


def torchserve_ctx(host: TorchServeHost, archives: dict[str, str]) -> Context:
    ctx = make_ctx(host=host, models=tuple(ModelSpec(name, Path(f"{name}.pth")) for name in archives))
    ctx.python_version = "3.11"
    ctx.archive_sha256 = dict(archives)
    return ctx


def test_torchserve_step_starts_once_then_changes_models_live() -> None:
    host = TorchServeHost()
    # First deploy: unit and config written, the service started with both models.
    ctx = torchserve_ctx(host, {"synthdet": "a" * 64, "cereal": "b" * 64})
    result = torchserve.apply(ctx)
    assert (result.changed, result.detail) == (True, "started")
    assert host.files[torchserve.CONFIG_FILE].mode == "640"
    assert host.files[torchserve.UNIT_FILE].data and host.ran(r"^systemctl restart ")
    assert ctx.state.loaded_models == {"synthdet": "a" * 64, "cereal": "b" * 64}
    host.registered = ["synthdet", "cereal"]
    # Rerun, nothing new: no restart, no reload.
    host.commands.clear()
    rerun = torchserve_ctx(host, {"synthdet": "a" * 64, "cereal": "b" * 64})
    rerun.state = ctx.state
    result = torchserve.apply(rerun)
    assert (result.changed, result.detail) == (False, "running, models current")
    assert not host.ran(r"restart|\?url=")
    # One model retrained, the other dropped: both happen live; TorchServe keeps running.
    host.commands.clear()
    changed = torchserve_ctx(host, {"synthdet": "c" * 64})
    changed.state = rerun.state
    result = torchserve.apply(changed)
    assert result.changed and result.detail == "reloaded synthdet, unloaded cereal"
    assert not host.ran(r"^systemctl restart")
    assert host.registered == ["synthdet"] and changed.state.loaded_models == {"synthdet": "c" * 64}
    assert host.ran(r"^rm -f /var/lib/synthdet/model-store/cereal\.mar$")


# ------------------------------------------------------------- url secret
@pytest.mark.parametrize(
    ("stored", "wanted", "detail", "changed"),
    [
        (None, None, "created", True),
        (SECRET, None, "kept", False),
        (SECRET, "N" * 32, "rotated (the old URL and QR code stop working)", True),
        (SECRET, SECRET, "kept", False),
    ],
)
def test_secret_step_says_what_happened(
    stored: str | None, wanted: str | None, detail: str, changed: bool
) -> None:
    host = FakeRunner()
    if stored:
        host.put(SECRET_FILE, stored + "\n", mode="600")
    ctx = make_ctx(host=host, options=DeployOptions(url_secret=wanted))
    result = secret.apply(ctx)
    assert (result.detail, result.changed) == (detail, changed)
    assert host.text(SECRET_FILE) == ctx.secret + "\n" and host.files[SECRET_FILE].mode == "600"
    assert ctx.secret == (wanted or stored or ctx.secret) and secret.SECRET_PATTERN.match(ctx.secret)


# ------------------------------------------------------------ model upload
def test_upload_places_a_changed_archive_privately_and_skips_an_unchanged_one(tmp_path: Path) -> None:
    from bootstrap.steps import upload_model
    from serving.inputs import sha256_file

    mar = tmp_path / "synthdet.mar"
    mar.write_bytes(b"archive bytes" * 100)
    host = FakeRunner().on(r"^df -P -B1 ", "99999999999\n")
    ctx = make_ctx(host=host)
    ctx.archives, ctx.archive_sha256 = {"synthdet": mar}, {"synthdet": sha256_file(mar)}
    sent: list[int] = []
    ctx.progress = SimpleNamespace(upload=lambda label, done, total: sent.append(done))  # type: ignore[assignment]
    assert upload_model.apply(ctx).changed
    placed = host.files["/var/lib/synthdet/model-store/synthdet.mar"]
    assert placed.data == mar.read_bytes()
    assert (placed.owner, placed.mode) == (f"root:{SERVICE_USER}", "640")
    assert sent[0] == 0 and sent[-1] == mar.stat().st_size  # progress from 0 to the whole file
    host.commands.clear()
    assert not upload_model.apply(ctx).changed
    assert not host.ran(r"cat > ")


def test_host_state_round_trip_tolerates_garbage() -> None:
    state = HostState(apt_installed=["nginx"], loaded_models={"synthdet": "ab" * 32})
    assert HostState.from_json(state.to_json()) == state
    assert HostState.from_json(None) == HostState()
    assert HostState.from_json("{not json") == HostState()
    assert HostState.from_json('{"future_field": 1}') == HostState()


def test_render_template_requires_every_value() -> None:
    with pytest.raises(KeyError, match="secret"):
        render_template("nginx-model-location.conf", name="synthdet")


def test_deploy_result_json() -> None:
    result = DeployResult(
        endpoints={"synthdet": "https://h/s/predictions/synthdet"},
        endpoint="https://h/s/predictions/synthdet",
        cert_sha256="AB:CD",
        changed=False,
        public_address="h",
        steps=[("packages", False)],
        host={"gpu": None},
    )
    data = result.to_dict()
    assert data["endpoint"] == result.endpoint and data["cert_sha256"] == "AB:CD"
    assert data["public_ip"] == "h" and data["steps"] == [{"name": "packages", "changed": False}]


def test_deploy_options_validation() -> None:
    with pytest.raises(ValueError, match="tls_key"):
        DeployOptions(tls_cert=Path("c.pem"))
    with pytest.raises(ValueError, match="port"):
        DeployOptions(public_port=0)


def test_deploy_options_cross_boundaries_as_plain_json() -> None:
    import json

    from serving.settings import ServingSettings

    options = DeployOptions(
        public_port=8443,
        url_secret=SECRET,
        tls_cert=Path("/c.pem"),
        tls_key=Path("/k.pem"),
        pip=PipSource(find_links="http://10.0.0.1:8000/", trusted_hosts=("10.0.0.1",)),
        serving=ServingSettings(workers=2, warmup_sizes=((320, 240),)),
        balancer_cidrs=("130.211.0.0/22",),
        torch_version="2.8.0",
    )
    data = json.loads(json.dumps(options.to_dict()))  # what Pulumi state and boot.json hold
    assert DeployOptions.from_dict(data) == options
    assert DeployOptions.from_dict({}) == DeployOptions()
    with pytest.raises(ValueError, match="unknown deploy options"):
        DeployOptions.from_dict({"color": "blue"})


def test_context_workers_default_one_per_gpu() -> None:
    assert make_ctx().workers_per_model == 1
    gpus = tuple(SimpleNamespace() for _ in range(2))
    assert make_ctx(gpus=gpus).workers_per_model == 2  # type: ignore[arg-type]


# ------------------------------------------------------------- disk space
def test_upload_is_refused_up_front_when_the_disk_cannot_hold_it() -> None:
    from bootstrap.steps import upload_model

    size = 170 * 2**20

    def with_df(answer: tuple[int, str, str]) -> Context:
        return make_ctx(host=FakeRunner().on(r"^df -P -B1 /var/lib/synthdet/model-store", answer))

    upload_model.check_space(with_df((0, f"{size + upload_model.SPARE_BYTES}\n", "")), "synthdet", size)
    with pytest.raises(DeployError, match=r"not enough disk space .* synthdet\.mar.* still served"):
        upload_model.check_space(with_df((0, f"{size}\n", "")), "synthdet", size)
    upload_model.check_space(with_df((1, "", "df: no")), "synthdet", size)  # df failed: let the upload try
