"""Which Python the service venv is built from, checked against a fake host.

`FakeHost` answers the commands the venv step and bootstrap.python_select
send (recorded output where a real host prints something worth parsing) and
keeps just enough state (files, the venv link, which interpreters exist) for
a rerun to be checked as a no-op.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from bootstrap import python_select
from bootstrap.api import DeployOptions, PipSource
from bootstrap.facts import (
    GpuInfo,
    HostFacts,
    HostPython,
    OsInfo,
    PythonProbe,
    interpreter_query,
    parse_apt_candidates,
    parse_interpreters,
    parse_python_version,
)
from bootstrap.steps import venv
from bootstrap.steps.base import SERVICE_USER, DeployError, HostState, Run, settings_for
from bootstrap.steps.layout import Layout
from bootstrap.steps.packages import SystemPackages
from bootstrap.steps.step import Done
from serving.models import ModelSpec
from tests.support.fake_host import FakeRunner

UBUNTU_2004 = OsInfo("ubuntu", "20.04", "Ubuntu 20.04.6 LTS", ("debian",))
DEBIAN_12 = OsInfo("debian", "12", "Debian GNU/Linux 12 (bookworm)")
M60 = GpuInfo("Tesla M60", "535.183.01", (5, 2), 8192)
UV_PYTHON = "/opt/synthdet/python/cpython-3.11.14-linux-x86_64-gnu/bin/python3"

# interpreter_query's lines, as printed on the hosts named.
PY311_LINE = "/usr/bin/python3.11 3.11.2 1\n"  # Debian 12
UV_LINE = f"{UV_PYTHON} 3.11.14 1\n"  # python-build-standalone, installed by uv

# `apt-cache policy python3.12-venv python3.11-venv python3.10-venv`:
# Ubuntu 20.04 knows none of them (nothing on stdout); Debian 12 has 3.11 only.
APT_POLICY_FOCAL = ""
APT_POLICY_BOOKWORM = """\
python3.11-venv:
  Installed: (none)
  Candidate: 3.11.2-6+deb12u6
  Version table:
     3.11.2-6+deb12u6 500
        500 http://deb.debian.org/debian bookworm/main amd64 Packages
"""
# Known (e.g. from a removed PPA) but nothing installable.
APT_POLICY_NO_CANDIDATE = "python3.10-venv:\n  Installed: (none)\n  Candidate: (none)\n  Version table:\n"

# uv 0.13.9 (pip-installed into a Python 3.8 venv) on a machine without internet.
_PBS = (
    "https://github.com/astral-sh/python-build-standalone/releases/download/20261110/"
    "cpython-3.11.18%2B20261110-x86_64-unknown-linux-gnu-install_only_stripped.tar.gz"
)
UV_OFFLINE = f"""\
error: Failed to install cpython-3.11.18-linux-x86_64-gnu
  cause: Request failed after 3 retries in 9.1s
  cause: Failed to download `{_PBS}`
  cause: error sending request for url ({_PBS})
  cause: client error (Connect)
  cause: dns error
  cause: error resolving DNS
  cause: failed to lookup address information: Name or service not known
"""

VERIFY_OK = json.dumps({"torch": "2.8.0+cu126", "cuda": "12.6", "cuda_available": True, "ts": "0.12.0"})


# ------------------------------------------------------------- fake host
@dataclass
class FakeHost(FakeRunner):
    """Answers the venv step's commands; records them for the assertions."""

    # Name (or glob) interpreter_query looks for -> the line it prints when present.
    interpreters: dict[str, str] = field(default_factory=dict)
    apt_policy: str = APT_POLICY_FOCAL
    # What `apt-get install` makes appear, and whether uv works.
    apt_provides: dict[str, str] = field(default_factory=dict)
    uv_error: str = ""
    # False: pip could not get uv itself (the script never reaches `uv python install`).
    uv_pip_ok: bool = True
    verify: str = VERIFY_OK
    built: set[str] = field(default_factory=set)
    link: str = ""

    def _answer(self, cmd: str, stdin: bytes | None) -> tuple[int, str, str]:
        if 'mv -f "$tmp"' in cmd:  # a file placed with bootstrap.files
            return super()._answer(cmd, stdin)
        if m := re.match(r"for p in (.*?); do", cmd):
            names = shlex.split(m.group(1))
            return 0, "".join(self.interpreters.get(n, "") for n in names), ""
        if "apt-cache policy" in cmd:
            return 0, self.apt_policy, ""
        if "apt-get" in cmd and " install " in cmd:
            self.interpreters.update(self.apt_provides)
            return 0, "", ""
        if "python install" in cmd:
            if not self.uv_pip_ok:
                return 1, "", "ERROR: No matching distribution found for uv\n"
            if self.uv_error:
                return 2, python_select.UV_READY + "\n", self.uv_error
            self.interpreters["/opt/synthdet/python/cpython-3*/bin/python3"] = UV_LINE
            return 0, "", ""
        if m := re.match(r'echo "\$\(readlink \S+\)"; cat (\S+)', cmd):
            stamp = self.files.get(m.group(1))
            return 0, f"{self.link}\n{stamp.data.decode() if stamp else ''}", ""
        if m := re.match(r"test -x (\S+)/bin/torchserve", cmd):
            return (0 if m.group(1) in self.built else 1), "", ""
        if m := re.match(r"rm -rf (\S+) && .* -m venv", cmd):
            self.built.add(m.group(1))
            return 0, "", ""
        if " -m pip " in cmd:
            return 0, "", ""
        if "<<'EOF'" in cmd:
            return 0, self.verify + "\n", ""
        if m := re.match(r"ln -sfn (\S+) ", cmd):
            self.link = m.group(1)
            return 0, "", ""
        raise AssertionError(f"the fake host does not know this command: {cmd}")

    def ran(self, pattern: str) -> list[str]:
        return [c for c in self.commands if re.search(pattern, c)]


@dataclass
class VenvCase:
    """The venv step's inputs on a fake host (as a deploy makes them), and its last output."""

    run: Run
    state: HostState = field(default_factory=HostState)
    torch: venv.TorchChoice | None = None

    def apply(self) -> Done[venv.Venv]:
        done = venv.apply(self.run, self.state, SystemPackages(), Layout(SERVICE_USER))
        self.torch = done.output.torch
        return done


def make_case(
    host: FakeHost,
    pythons: tuple[PythonProbe, ...],
    *,
    gpu: GpuInfo | None = None,
    os_info: OsInfo = UBUNTU_2004,
    options: DeployOptions | None = None,
) -> VenvCase:
    facts = HostFacts(os_info, "x86_64", 4, 30000, (gpu,) if gpu else (), pythons)
    options = options or DeployOptions()
    run = Run(
        conn=host,
        facts=facts,
        models=(ModelSpec("synthdet", Path("a.pth")),),
        options=replace(options, serving=settings_for(facts, options.serving)),
        public_address="203.0.113.7",
    )
    return VenvCase(run)


def focal_python3() -> PythonProbe:
    """Ubuntu 20.04's own python3 on the Deep Learning Base AMI: 3.8, no torch."""
    return PythonProbe("/usr/bin/python3", "3.8.10", has_venv=True)


def venv_created_from(host: FakeHost) -> str:
    (cmd,) = host.ran(r" -m venv (--system-site-packages )?/opt/synthdet/venv-")
    return shlex.split(cmd.split("&&", 1)[1])[0]


def torch_installs(host: FakeHost) -> list[str]:
    return host.ran(r"pip .* install .*torchvision")


def rerun_is_noop(case: VenvCase, host: FakeHost) -> bool:
    before = len(host.commands)
    result = case.apply()
    later = host.commands[before:]
    return not result.changed and not any("install" in c or "-m venv" in c for c in later)


# ------------------------------------------------------------------ parsers
def test_parse_python_version() -> None:
    assert parse_python_version("3.8.10") == (3, 8, 10)
    assert parse_python_version("Python 3.11.2") == (3, 11, 2)
    assert parse_python_version("3.12") == (3, 12)
    assert parse_python_version("") == ()
    assert PythonProbe("/usr/bin/python3", "3.8.10").version == (3, 8, 10)


def test_parse_interpreters_recorded_output() -> None:
    text = (
        "/usr/bin/python3.11 3.11.2 1\n"
        "/usr/bin/python3.10 3.10.12 0\n"
        "Traceback (most recent call last):\n"  # a broken one's noise is ignored
        "/usr/bin/python3.11 3.11.2 1\n"  # python3.11 and python3 can be the same file
    )
    assert parse_interpreters(text) == [
        HostPython("/usr/bin/python3.11", (3, 11, 2), True),
        HostPython("/usr/bin/python3.10", (3, 10, 12), False),
    ]
    assert parse_interpreters("") == []


def test_interpreter_query_runs_here() -> None:
    """The query is plain sh + any python3: run it against this machine's own."""
    import subprocess
    import sys

    names = (shlex.quote(sys.executable), "no-such-python3.99", "/no/such/dir/*/bin/python3")
    out = subprocess.run(["sh", "-c", interpreter_query(names)], capture_output=True, text=True).stdout
    (found,) = parse_interpreters(out)
    assert found.version == tuple(sys.version_info[:3]) and found.has_venv


def test_parse_apt_candidates() -> None:
    assert parse_apt_candidates(APT_POLICY_BOOKWORM) == {"python3.11-venv": "3.11.2-6+deb12u6"}
    assert parse_apt_candidates(APT_POLICY_FOCAL) == {}
    assert parse_apt_candidates(APT_POLICY_NO_CANDIDATE) == {}


# ------------------------------------------------------------------- policy
def test_image_python_311_is_reused_with_its_torch() -> None:
    """Unchanged behaviour: a new enough image Python keeps its torch, nothing is searched."""
    image = PythonProbe("/usr/bin/python3", "3.11.2", True, torch="2.8.0", torchvision="0.23.0")
    host = FakeHost()
    case = make_case(host, (image,), os_info=DEBIAN_12)
    result = case.apply()
    assert result.changed and case.torch is not None and case.torch.reuse_image
    assert "Python 3.11.2 (image)" in result.detail
    assert host.ran(r"/usr/bin/python3 -m venv --system-site-packages /opt/synthdet/venv-")
    assert not torch_installs(host)
    assert not host.ran("command -v") and not host.ran("apt-get")
    assert rerun_is_noop(case, host)


def test_old_image_python_with_python311_present_installs_torch() -> None:
    """The M60 AMI: python3 is 3.8; an installed python3.11 is used and gets cu126 torch."""
    host = FakeHost(interpreters={"python3.11": PY311_LINE})
    case = make_case(host, (focal_python3(),), gpu=M60)
    result = case.apply()
    assert venv_created_from(host) == "/usr/bin/python3.11"
    assert not host.ran("--system-site-packages")
    (install,) = torch_installs(host)
    assert "https://download.pytorch.org/whl/cu126" in install
    assert case.torch is not None and not case.torch.reuse_image and case.torch.build is not None
    assert case.torch.build.flavor == "cu126"
    assert "Python 3.11.2 (host)" in result.detail
    assert not host.ran("apt-get") and not host.ran("python install")
    stamp = json.loads(next(v.data for k, v in host.files.items() if k.endswith(venv.STAMP_NAME)))
    assert stamp["python"] == "/usr/bin/python3.11" and stamp["python_version"] == "3.11.2"
    assert rerun_is_noop(case, host)


def test_old_image_torch_is_not_reused_by_another_interpreter() -> None:
    """An image whose torch sits in a 3.8 Python: that torch cannot serve from 3.11."""
    old = PythonProbe(
        "/opt/conda/bin/python3", "3.8.18", True, torch="2.4.1", torchvision="0.19.1", cuda="12.1",
        arch_list=("sm_50", "sm_60", "sm_70"), cuda_available=True, capability=(5, 2),
    )  # fmt: skip
    host = FakeHost(interpreters={"python3.11": PY311_LINE})
    case = make_case(host, (old, focal_python3()), gpu=M60)
    case.apply()
    assert venv_created_from(host) == "/usr/bin/python3.11"
    assert case.torch is not None and not case.torch.reuse_image and len(torch_installs(host)) == 1
    assert "belongs to Python 3.8.18 (/opt/conda/bin/python3)" in case.torch.reason


def test_old_python_and_nothing_else_installs_python_with_uv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UV_PYTHON_INSTALL_MIRROR", "https://mirror.example/pbs")
    host = FakeHost()
    pip = PipSource(index_url="https://pypi.mirror.example/simple")
    case = make_case(host, (focal_python3(),), gpu=M60, options=DeployOptions(pip=pip))
    result = case.apply()
    # apt was asked first and had nothing (Ubuntu 20.04), then uv.
    assert host.ran(r"apt-cache policy python3.12-venv python3.11-venv python3.10-venv")
    assert not host.ran(r"apt-get .* install")
    (uv,) = host.ran("python install")
    assert "/usr/bin/python3 -m venv /opt/synthdet/uv" in uv
    assert "install --disable-pip-version-check -q --index-url https://pypi.mirror.example/simple uv" in uv
    assert '"$uv" python install 3.11' in uv
    env = host.envs[host.commands.index(uv)]
    assert env["UV_PYTHON_INSTALL_DIR"] == "/opt/synthdet/python"
    assert env["UV_PYTHON_INSTALL_MIRROR"] == "https://mirror.example/pbs"
    assert venv_created_from(host) == UV_PYTHON
    assert len(torch_installs(host)) == 1
    assert "Python 3.11.14 (uv)" in result.detail
    # The rerun finds uv's Python under /opt/synthdet and changes nothing.
    assert rerun_is_noop(case, host)
    assert len(host.ran("python install")) == 1


def test_apt_python_where_the_distribution_has_one() -> None:
    host = FakeHost(apt_policy=APT_POLICY_BOOKWORM, apt_provides={"python3.11": PY311_LINE})
    case = make_case(host, (PythonProbe("/usr/bin/python3", "3.9.2", True),), os_info=DEBIAN_12)
    result = case.apply()
    assert host.ran(r"install -y -q --no-install-recommends python3.11 python3.11-venv$")
    assert case.state.apt_installed == ["python3.11", "python3.11-venv"]  # undeploy removes them
    assert venv_created_from(host) == "/usr/bin/python3.11"
    assert "(apt)" in result.detail and not host.ran("python install")


def test_apt_not_allowed_goes_to_uv() -> None:
    host = FakeHost(apt_policy=APT_POLICY_BOOKWORM)
    options = DeployOptions(install_system_packages=False)
    case = make_case(host, (focal_python3(),), options=options)
    case.apply()
    assert not host.ran("apt") and host.ran("python install")


@pytest.mark.parametrize("same_as_image", [True, False])
def test_python_override(same_as_image: bool) -> None:
    image = PythonProbe("/usr/bin/python3.12", "3.12.3", True, torch="2.8.0", torchvision="0.23.0")
    path = "/usr/bin/python3.12" if same_as_image else "/opt/py/bin/python3.12"
    host = FakeHost(interpreters={path: f"{path} 3.12.3 1\n"})
    case = make_case(host, (image,), options=DeployOptions(python=path))
    result = case.apply()
    assert venv_created_from(host) == path
    assert "Python 3.12.3 (--python)" in result.detail
    assert case.torch is not None and case.torch.reuse_image is same_as_image
    assert bool(torch_installs(host)) is not same_as_image


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("", "no such interpreter on the host"),
        ("/usr/bin/python3.8 3.8.10 1\n", "is Python 3.8.10; the service needs >= 3.10"),
        ("/usr/bin/python3.8 3.11.9 0\n", "install its venv package (e.g. python3.11-venv)"),
    ],
)
def test_python_override_errors(line: str, message: str) -> None:
    host = FakeHost(interpreters={"/usr/bin/python3.8": line})
    case = make_case(host, (focal_python3(),), options=DeployOptions(python="/usr/bin/python3.8"))
    with pytest.raises(DeployError, match=re.escape(message)):
        case.apply()
    assert not host.ran("-m venv /opt/synthdet/venv")  # never a fallback when forced


def test_error_when_everything_fails() -> None:
    host = FakeHost(uv_error=UV_OFFLINE)
    case = make_case(host, (focal_python3(),), gpu=M60)
    with pytest.raises(DeployError) as err:
        case.apply()
    text = str(err.value)
    assert text.startswith("host Python 3.8.10 (/usr/bin/python3) is too old")
    assert "no python3.12/3.11/3.10 with venv support on the host" in text
    assert "apt: Ubuntu 20.04.6 LTS has no python3.12-venv/python3.11-venv/python3.10-venv" in text
    assert "uv: could not download Python 3.11 (python-build-standalone) from GitHub (no internet?)" in text
    assert "failed to lookup address information" in text
    assert "Install python3.11 (with its venv module) on the image" in text
    assert "pass --python /path/to/python3.11" in text
    assert not host.ran("-m venv /opt/synthdet/venv")


def test_error_when_uv_itself_is_not_in_the_package_index() -> None:
    host = FakeHost(uv_pip_ok=False)
    case = make_case(host, (focal_python3(),), options=DeployOptions(pip=PipSource(find_links="/wheels")))
    with pytest.raises(DeployError, match="could not pip-install uv from the package index") as err:
        case.apply()
    assert "No matching distribution found for uv" in str(err.value)
    (uv,) = host.ran("python install")
    assert "--no-index --find-links /wheels uv" in uv  # the closed wheelhouse is honoured


def test_pick_host_needs_venv_support() -> None:
    no_venv = HostPython("/usr/bin/python3.12", (3, 12, 3), False)
    ok = HostPython("/usr/bin/python3.11", (3, 11, 2), True)
    old = HostPython("/usr/bin/python3.9", (3, 9, 2), True)
    assert python_select.pick_host([no_venv, old, ok]) == ok
    assert python_select.pick_host([no_venv, old]) is None


def test_stamp_includes_the_interpreter_version() -> None:
    case = make_case(FakeHost(), (focal_python3(),))
    choice = venv.TorchChoice(False, "cpu", None, "cpu")
    reqs = "torchserve==0.12.0\n"
    a = venv.stamp_for(case.run.options, choice, "/usr/bin/python3.11", reqs, "3.11.2")
    assert a == venv.stamp_for(case.run.options, choice, "/usr/bin/python3.11", reqs, "3.11.2")
    assert a != venv.stamp_for(case.run.options, choice, "/usr/bin/python3.11", reqs, "3.11.9")
