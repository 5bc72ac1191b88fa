"""What the steps write (templates, scripts, pip arguments), checked without a host."""

from __future__ import annotations

import datetime
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from bootstrap.api import DeployOptions, DeployResult, ModelSpec, PipSource
from bootstrap.certs import make_self_signed
from bootstrap.deploy import undeploy_script
from bootstrap.facts import HostFacts, OsInfo, PythonProbe
from bootstrap.steps import STEPS, health, layout, nginx, packages, secret, torchserve, venv
from bootstrap.steps.base import Context, HostState, render_template
from bootstrap.torch_select import CUDA_BUILDS, TorchChoice

SECRET = "Zr3_kP0-qX7mW2nB9vL4tY8sD1fH6jGc"


def make_ctx(
    models: tuple[ModelSpec, ...] = (ModelSpec("synthdet", Path("a.pth")),),
    options: DeployOptions | None = None,
    gpus: tuple = (),
    pythons: tuple[PythonProbe, ...] = (),
) -> Context:
    facts = HostFacts(OsInfo("debian", "12", "Debian 12"), "x86_64", 2, 4000, gpus, pythons)
    ctx = Context(
        conn=None,  # type: ignore[arg-type]  # nothing here talks to a host
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
        "/",
        # Named locations: JSON bodies for the errors nginx makes itself.
        "@synthdet_429",
        "@synthdet_503",
        "@synthdet_404",
        "@synthdet_405",
        "@synthdet_413",
    ]
    # Prediction locations: POST only, a Content-Type always, to loopback TorchServe.
    for name in ("synthdet", "other"):
        block = site.split(f"location = /{SECRET}/predictions/{name} {{")[1].split("\n    }\n")[0]
        assert "limit_except POST { deny all; }" in block
        assert "proxy_set_header Content-Type $synthdet_content_type;" in block
        assert f"proxy_pass http://synthdet_torchserve/predictions/{name};" in block
    assert "server 127.0.0.1:18080;" in site
    assert '""      "application/octet-stream";' in site
    assert "client_max_body_size 10485760;" in site
    # The catch-all answers 404 after the rate limit (try_files, not return).
    catch_all = site.split("location / {")[1].split("\n    }\n")[0]
    assert "try_files /synthdet-none =404;" in catch_all and "return" not in catch_all
    # The access log format must not contain the URI (it carries the secret).
    log_format = site.split("log_format synthdet")[1].split(";")[0]
    assert "$request" not in log_format.replace("$request_method", "").replace("$request_length", "").replace(
        "$request_time", ""
    )


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
    from bootstrap.settings import ServingSettings

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
def test_unit_is_foreground_supervised_and_hardened() -> None:
    unit = torchserve.render_unit(has_gpu=False)
    assert "{{" not in unit
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert "--foreground" in exec_start and "--ts-config /etc/synthdet/config.properties" in exec_start
    for line in (
        "User=synthdet",
        "Restart=always",
        "RestartSec=2",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/synthdet /var/log/synthdet",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "RestrictSUIDSGID=yes",
        "Environment=TMPDIR=/var/lib/synthdet/tmp",
        "Environment=LOG_LOCATION=/var/log/synthdet",
        "Environment=TS_DECODE_INPUT_REQUEST=false",
        "WantedBy=multi-user.target",
        "StartLimitIntervalSec=0",
    ):
        assert line in unit.splitlines(), line
    # The GPU's device nodes stay visible on GPU hosts.
    assert "PrivateDevices=no" in torchserve.render_unit(has_gpu=True).splitlines()


def test_torchserve_config_listens_on_loopback_and_enables_model_reload() -> None:
    config = torchserve.render_config(make_ctx(), ["synthdet"])
    props = dict(line.split("=", 1) for line in config.splitlines() if "=" in line)
    for key in ("inference_address", "management_address", "metrics_address"):
        assert props[key].startswith("http://127.0.0.1:"), props[key]
    assert props["load_models"] == "synthdet=synthdet.mar"
    assert props["enable_model_api"] == "true"
    assert props["disable_token_authorization"] == "true"


def test_workers_ready() -> None:
    ready = '[{"modelName": "synthdet", "workers": [{"id": "9000", "status": "READY"}]}]'
    loading = '[{"workers": [{"status": "READY"}, {"status": "UNLOADING"}]}]'
    assert health.workers_ready(ready) == (True, "READY")
    assert health.workers_ready(loading)[0] is False
    assert health.workers_ready('[{"workers": []}]') == (False, "no workers")
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
    assert health.health_url(ctx).endswith(f"/{SECRET}/ping")


def test_secrets() -> None:
    generated = secret.new_secret()
    assert secret.SECRET_PATTERN.match(generated) and len(generated) == 32
    assert secret.check_secret(SECRET) == SECRET
    for bad in ("short", "has/slash" * 3, "spaces are bad here!", "ü" * 20):
        with pytest.raises(ValueError):
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


def test_wanted_packages() -> None:
    with_venv = PythonProbe("/usr/bin/python3", "3.11.2", has_venv=True)
    ctx = make_ctx(pythons=(with_venv,))
    assert packages.wanted_packages(ctx, 17, {"nginx": "1.22"}) == []
    assert packages.wanted_packages(ctx, 8, {}) == ["openjdk-17-jre-headless", "nginx"]
    bare = make_ctx(pythons=(PythonProbe("/usr/bin/python3", "3.11.2", has_venv=False),))
    assert packages.wanted_packages(bare, 17, {"nginx-light": "1"}) == ["python3-venv"]


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
def test_layout_script_is_idempotent_shell() -> None:
    script = layout.script()
    assert "useradd --system" in script and "nologin" in script
    assert "-name '.*.part-*'" in script  # partial uploads are swept


def test_undeploy_removes_only_what_deploy_added() -> None:
    nothing_installed = undeploy_script(HostState())
    assert "systemctl disable --now synthdet-torchserve.service" in nothing_installed
    assert "rm -rf /opt/synthdet /var/lib/synthdet /var/log/synthdet /etc/synthdet" in (nothing_installed)
    assert "apt-get" not in nothing_installed and "userdel" not in nothing_installed
    assert "sites-enabled/default" not in nothing_installed
    full = undeploy_script(HostState(apt_installed=["nginx"], removed_default_site=True, created_user=True))
    assert "purge -y -q nginx" in full and "userdel synthdet" in full
    assert "ln -sfn /etc/nginx/sites-available/default" in full
    assert "purge" not in undeploy_script(HostState(apt_installed=["nginx"]), keep_packages=True)


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
    data = result.to_json_dict()
    assert data["endpoint"] == result.endpoint and data["cert_sha256"] == "AB:CD"
    assert data["public_ip"] == "h" and data["steps"] == [{"name": "packages", "changed": False}]


def test_deploy_options_validation() -> None:
    with pytest.raises(ValueError, match="tls_key"):
        DeployOptions(tls_cert=Path("c.pem"))
    with pytest.raises(ValueError, match="port"):
        DeployOptions(public_port=0)


def test_context_workers_default_one_per_gpu() -> None:
    assert make_ctx().workers_per_model == 1
    gpus = tuple(SimpleNamespace() for _ in range(2))
    assert make_ctx(gpus=gpus).workers_per_model == 2  # type: ignore[arg-type]


# ------------------------------------------------------------- disk space
class _DfConnection:
    """Answers `df` with a fixed number of free bytes; records nothing else."""

    def __init__(self, free: str, rc: int = 0) -> None:
        self.free, self.rc = free, rc

    def run(self, cmd: str, **_: object) -> object:
        from bootstrap.ssh import RunResult

        assert cmd.startswith("df -P -B1 /var/lib/synthdet/model-store")
        return RunResult(cmd, self.rc, self.free + "\n", "")


def test_upload_is_refused_up_front_when_the_disk_cannot_hold_it() -> None:
    from bootstrap.steps import upload_model
    from bootstrap.steps.base import DeployError

    ctx = make_ctx()
    size = 170 * 2**20
    ctx.conn = _DfConnection(str(size + upload_model.SPARE_BYTES))  # type: ignore[assignment]
    upload_model.check_space(ctx, "synthdet", size)  # just enough
    ctx.conn = _DfConnection(str(size))  # type: ignore[assignment]
    with pytest.raises(DeployError, match=r"not enough disk space .* synthdet\.mar.* still served"):
        upload_model.check_space(ctx, "synthdet", size)
    ctx.conn = _DfConnection("", rc=1)  # type: ignore[assignment]
    upload_model.check_space(ctx, "synthdet", size)  # df failed: let the upload try
