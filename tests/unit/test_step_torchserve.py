"""The torchserve step on its own: its unit and config, and models changed live, on a fake host."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

from bootstrap.steps import torchserve
from bootstrap.steps.base import SERVICE_USER, HostState, Run
from bootstrap.steps.firewall import FIREWALL_UNIT_NAME, Firewall
from bootstrap.steps.step import Done
from bootstrap.steps.upload_model import ModelStore
from bootstrap.steps.venv import Venv
from bootstrap.torch_select import TorchChoice
from serving.models import ModelSpec
from tests.support.fake_host import FakeRunner, make_run

CPU_TORCH = TorchChoice(True, "cpu", None, "image torch")


def test_unit_runs_java_directly_as_the_service_account_behind_the_firewall() -> None:
    unit = torchserve.render_unit(make_run(), "/usr/bin/java", "3.11.2", FIREWALL_UNIT_NAME)
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
    gpu = make_run(gpus=(SimpleNamespace(),))
    gpu_unit = torchserve.render_unit(gpu, "/usr/bin/java", "3.10.12", FIREWALL_UNIT_NAME)
    assert "PrivateDevices=no" in gpu_unit.splitlines()
    assert "/opt/synthdet/venv/lib/python3.10/site-packages" in gpu_unit


def test_torchserve_config_listens_on_loopback_and_enables_model_reload() -> None:
    config = torchserve.render_config(make_run(), ["synthdet"])
    props = dict(line.split("=", 1) for line in config.splitlines() if "=" in line)
    for key in ("inference_address", "management_address", "metrics_address"):
        assert props[key].startswith("http://127.0.0.1:"), props[key]
    assert props["load_models"] == "synthdet=synthdet.mar"
    assert props["enable_model_api"] == "true"
    assert props["disable_token_authorization"] == "true"


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


def apply(host: TorchServeHost, state: HostState, archives: dict[str, str]) -> Done[torchserve.TorchServe]:
    """The step on its own: its inputs made here, as the firewall, venv and upload steps yield them."""
    run: Run = make_run(host=host, models=tuple(ModelSpec(name, Path(f"{name}.pth")) for name in archives))
    venv = Venv(CPU_TORCH, "3.11", switched=False)
    return torchserve.apply(run, state, Firewall(FIREWALL_UNIT_NAME), venv, ModelStore(dict(archives)))


def test_torchserve_step_starts_once_then_changes_models_live() -> None:
    host, state = TorchServeHost(), HostState()
    # First deploy: unit and config written, the service started with both models.
    done = apply(host, state, {"synthdet": "a" * 64, "cereal": "b" * 64})
    assert (done.changed, done.detail) == (True, "started")
    assert done.output == torchserve.TorchServe(("synthdet", "cereal"))
    assert host.files[torchserve.CONFIG_FILE].mode == "640"
    assert host.files[torchserve.UNIT_FILE].data and host.ran(r"^systemctl restart ")
    assert state.loaded_models == {"synthdet": "a" * 64, "cereal": "b" * 64}
    host.registered = ["synthdet", "cereal"]
    # Rerun, nothing new: no restart, no reload.
    host.commands.clear()
    done = apply(host, state, {"synthdet": "a" * 64, "cereal": "b" * 64})
    assert (done.changed, done.detail) == (False, "running, models current")
    assert not host.ran(r"restart|\?url=")
    # One model retrained, the other dropped: both happen live; TorchServe keeps running.
    host.commands.clear()
    done = apply(host, state, {"synthdet": "c" * 64})
    assert done.changed and done.detail == "reloaded synthdet, unloaded cereal"
    assert not host.ran(r"^systemctl restart")
    assert host.registered == ["synthdet"] and state.loaded_models == {"synthdet": "c" * 64}
    assert host.ran(r"^rm -f /var/lib/synthdet/model-store/cereal\.mar$")


def test_a_switched_venv_restarts_torchserve() -> None:
    host, state = TorchServeHost(), HostState()
    apply(host, state, {"synthdet": "a" * 64})
    host.registered = ["synthdet"]
    host.commands.clear()
    run = make_run(host=host)
    venv = Venv(CPU_TORCH, "3.11", switched=True)
    done = torchserve.apply(
        run, state, Firewall(FIREWALL_UNIT_NAME), venv, ModelStore({"synthdet": "a" * 64})
    )
    assert (done.changed, done.detail) == (True, "restarted")
    assert host.ran(r"^systemctl restart synthdet-torchserve.service$")
