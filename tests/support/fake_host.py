"""A fake host for the deploy steps' unit tests: canned answers in, commands out.

`FakeRunner` satisfies `bootstrap.runner.Runner`. It keeps a table of files
(what `bootstrap.files` reads, hashes and places, with owner and mode) and
answers every other command from rules a test adds (`on(pattern, ...)`);
a command no rule knows fails the test, so a step that starts sending
something new is noticed. Every command is recorded for the assertions.

`make_run` builds a step's run-wide inputs as a deploy does; `FakeDebianHost`
answers every step's commands, so the whole plan runs against it (`deploy_run`,
`run_plan`); `created_by` reads what a run's commands and placed files create (for
the footprint check).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shlex
import socket
import ssl
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

from bootstrap.api import DeployOptions
from bootstrap.deploy import execute
from bootstrap.facts import HostFacts, OsInfo, PythonProbe
from bootstrap.runner import CommandError, Runner, RunResult, SentCallback, Stdin
from bootstrap.steps import ORDER
from bootstrap.steps.base import Archive, HostState, Run, settings_for
from bootstrap.steps.step import Step
from serving.inputs import sha256_file
from serving.models import ModelSpec

Answer = tuple[int, str, str]
Responder = Callable[[re.Match[str]], Answer]


@dataclass
class HostFile:
    data: bytes
    owner: str = "root:root"
    mode: str = "644"


@dataclass
class FakeRunner:
    root: bool = True
    files: dict[str, HostFile] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)
    sudo_used: list[bool] = field(default_factory=list)
    envs: list[dict[str, str]] = field(default_factory=list)  # the environment of each command
    rules: list[tuple[re.Pattern[str], Responder]] = field(default_factory=list)

    # -- the Runner protocol ---------------------------------------------------
    @property
    def is_root(self) -> bool:
        return self.root

    @property
    def where(self) -> str:
        return "root@fake:22" if self.root else "synthdet@fake:22"

    def close(self) -> None:
        pass

    def run(
        self,
        cmd: str,
        *,
        sudo: bool = True,
        check: bool = True,
        stdin: Stdin = None,
        timeout_s: float | None = 600.0,
        env: Mapping[str, str] | None = None,
        on_sent: SentCallback | None = None,
    ) -> RunResult:
        self.commands.append(cmd)
        self.sudo_used.append(sudo)
        self.envs.append(dict(env or {}))
        data = stdin if isinstance(stdin, bytes) or stdin is None else _read(stdin)
        if on_sent and data is not None:
            on_sent(len(data))
        rc, out, err = self._answer(cmd, data)
        result = RunResult(cmd, rc, out, err)
        if check and rc != 0:
            raise CommandError(result)
        return result

    # -- setting up --------------------------------------------------------------
    def on(self, pattern: str, answer: Answer | Responder | str = "") -> FakeRunner:
        """Answer commands matching `pattern` (re.search): output text, (rc, out, err) or a function."""
        if isinstance(answer, str):
            text = answer
            responder: Responder = lambda _m: (0, text, "")  # noqa: E731
        elif isinstance(answer, tuple):
            fixed = answer
            responder = lambda _m: fixed  # noqa: E731
        else:
            responder = answer
        self.rules.insert(0, (re.compile(pattern), responder))  # later rules win
        return self

    def put(self, path: str, data: str | bytes, owner: str = "root:root", mode: str = "644") -> None:
        self.files[path] = HostFile(data.encode() if isinstance(data, str) else data, owner, mode)

    # -- assertions ----------------------------------------------------------------
    def ran(self, pattern: str) -> list[str]:
        return [c for c in self.commands if re.search(pattern, c)]

    def text(self, path: str) -> str:
        return self.files[path].data.decode()

    # -- the commands bootstrap.files sends ------------------------------------------
    def _answer(self, cmd: str, stdin: bytes | None) -> Answer:
        if m := re.search(r'mv -f "\$tmp" (\S+)', cmd):  # files.upload_atomic
            return self._place(cmd, shlex.split(m.group(1))[0], stdin or b"")
        if m := re.fullmatch(r"if \[ -f (\S+) \]; then sha256sum \S+; stat -c '%U:%G %a' \S+; fi", cmd):
            return self._probe(shlex.split(m.group(1))[0], with_stat=True)
        if m := re.fullmatch(r"if \[ -f (\S+) \]; then sha256sum \S+; fi", cmd):
            return self._probe(shlex.split(m.group(1))[0], with_stat=False)
        if m := re.fullmatch(r"if \[ -e (\S+) \]; then base64 < \S+; else echo MISSING; fi", cmd):
            found = self.files.get(shlex.split(m.group(1))[0])
            return 0, (base64.b64encode(found.data).decode() if found else "MISSING") + "\n", ""
        if m := re.fullmatch(r"chown (\S+) (\S+) && chmod (\d+) \S+", cmd):
            found = self.files[shlex.split(m.group(2))[0]]
            found.owner, found.mode = m.group(1), m.group(3)
            return 0, "", ""
        for pattern, responder in self.rules:
            if m := pattern.search(cmd):
                return responder(m)
        raise AssertionError(f"the fake host does not know this command:\n{cmd}")

    def _probe(self, path: str, *, with_stat: bool) -> Answer:
        found = self.files.get(path)
        if found is None:
            return 0, "", ""
        lines = [f"{hashlib.sha256(found.data).hexdigest()}  {path}"]
        if with_stat:
            lines.append(f"{found.owner} {found.mode}")
        return 0, "\n".join(lines) + "\n", ""

    def _place(self, script: str, target: str, data: bytes) -> Answer:
        want = re.search(r'if \[ "\$got" != (\S+) \]', script)
        owner = re.search(r'chown (\S+) "\$tmp"', script)
        mode = re.search(r'chmod (\d+) "\$tmp"', script)
        assert want and owner and mode, f"not a placement script:\n{script}"
        assert "umask 077" in script.split('cat > "$tmp"')[0], (
            "the temporary must be private from its first byte"
        )
        if hashlib.sha256(data).hexdigest() != shlex.split(want.group(1))[0]:
            return 3, "", "sha256 on the host is something else"
        self.files[target] = HostFile(data, owner.group(1), mode.group(1))
        return 0, "", ""


def _read(stream: IO[bytes]) -> bytes:
    return stream.read()


# ------------------------------------------------------------------ a whole Debian host
SECRET = "Zr3_kP0-qX7mW2nB9vL4tY8sD1fH6jGc"
DEBIAN_12 = OsInfo("debian", "12", "Debian 12")
# The image's python3 with torch (a CPU host: the venv reuses it).
IMAGE_PYTHON = PythonProbe("/usr/bin/python3", "3.11.2", has_venv=True, torch="2.8.0", torchvision="0.23.0")


def make_run(
    models: tuple[ModelSpec, ...] = (ModelSpec("synthdet", Path("a.pth")),),
    options: DeployOptions | None = None,
    gpus: tuple[Any, ...] = (),
    pythons: tuple[PythonProbe, ...] = (),
    host: Runner | None = None,
    public_address: str = "203.0.113.7",
    archives: Mapping[str, Archive] | None = None,
    cpus: int = 2,
) -> Run:
    """A run as `bootstrap.deploy.run_steps` makes it: serving settings chosen for the facts."""
    facts = HostFacts(DEBIAN_12, "x86_64", cpus, 4000, gpus, pythons)
    options = options or DeployOptions()
    return Run(
        conn=host or FakeRunner(),
        facts=facts,
        models=models,
        options=replace(options, serving=settings_for(facts, options.serving)),
        public_address=public_address,
        archives=archives or {},
    )


class FakeDebianHost(FakeRunner):
    """Every command of every deploy step answered as Debian 12 with nginx, a JRE and an image
    Python with torch would, with just enough state (units, links, the venv) that a rerun is
    a no-op. "nginx" is a real HTTPS server on 127.0.0.1:`https_port`, (re)started by
    `systemctl restart/reload nginx` with the certificate and key the nginx step placed:
    it answers the health path for the secret the secret step stored."""

    NGINX_CONF = "user www-data;\nworker_processes auto;\n"

    def __init__(
        self, dpkg_installed: tuple[str, ...] = ("nginx", "nftables", "python3-venv"), cpus: int = 2
    ) -> None:
        super().__init__()
        self.installed = set(dpkg_installed)
        self.active: set[str] = set()
        self.enabled: set[str] = set()
        self.accounts: set[str] = set()
        self.links: dict[str, str] = {
            "/etc/nginx/sites-enabled/default": "/etc/nginx/sites-available/default"
        }
        self.made_dirs: set[str] = set()
        self.registered: list[str] = []
        self.https_port = _free_port()
        self._https: ThreadingHTTPServer | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="fake-nginx-")
        self.put("/etc/nginx/nginx.conf", self.NGINX_CONF)
        # The facts a deploy reads first (bootstrap.facts.gather_host_facts): no GPU, the image's
        # python3 with torch.
        self.on(r"^cat /etc/os-release$", 'ID=debian\nVERSION_ID="12"\nPRETTY_NAME="Debian 12"\n')
        self.on(r"^uname -m; nproc; cat /proc/meminfo$", f"x86_64\n{cpus}\nMemTotal: 4096000 kB\n")
        self.on(r"^command -v nvidia-smi ", (1, "", ""))
        self.on(r"^\[ -x (\S+) \] && readlink -f ", self._probe_python)
        self.on(r"^java -version$", (0, "", 'openjdk version "17.0.13" 2024-10-15\n'))
        self.on(r"^command -v java$", "/usr/bin/java\n").on(r"^command -v nft$", "/usr/sbin/nft\n")
        self.on(r"^dpkg -s ", lambda _m: (0, self._dpkg(), ""))
        self.on(r"apt-get .* install -y -q --no-install-recommends (.+)$", self._apt_install)
        self.on(r"^getent passwd (\S+) && id -Gn", self._getent)
        self.on(r"^useradd .* (\S+)$", self._useradd)
        self.on(r"^set -e\n", self._directories)
        self.on(r"^id -u www-data$", "33\n")
        self.on(r"^nft list table inet (\S+)$", self._nft_table)
        self.on(r"^systemctl daemon-reload$")
        self.on(
            r"^systemctl is-enabled (?:--quiet )?(\S+)(?: \|\| systemctl enable --quiet \S+)?$",
            self._is_enabled,
        )
        self.on(r"^systemctl enable (\S+)$", self._enable)
        self.on(r"^systemctl is-active (\S+)$", self._is_active)
        self.on(r"^systemctl (restart|reload|start) (\S+)$", self._restart)
        self.on(r'^echo "\$\(readlink (\S+)\)"; cat (\S+) 2>/dev/null$', self._venv_probe)
        self.on(r"^test -x (\S+)$", lambda m: (0 if self._venv_of(m.group(1)) else 1, "", ""))
        self.on(r"^rm -rf (\S+) && \S+ -m venv (?:--system-site-packages )?(\S+)$", self._make_venv)
        self.on(r" -m pip .* install ")
        self.on(r"^(\S+)/bin/python - <<'EOF'\n", self._verify_venv)
        self.on(r"^ln -sfn (\S+) (\S+)\.new && mv -Tf ", self._switch_venv)
        self.on(r"^df -P -B1 ", "99999999999\n")
        self.on(r"^python3 - (GET|DELETE) http://127\.0\.0\.1:\d+(\S*) ", self._management)
        self.on(r"^python3 - (\S+) '?http://127\.0\.0\.1:\d+/models\?url=(\w+)\.mar", self._reload)
        self.on(r"^rm -f /var/lib/synthdet/model-store/")
        self.on(r"^rm -f /var/log/nginx/synthdet\.error\.log ")
        self.on(r"^test -s (\S+)$", lambda m: (0 if m.group(1) in self.files else 1, "", ""))
        self.on(r'^\[ "\$\(readlink (\S+)\)" = (\S+) \] \|\| ', self._link_site)
        self.on(r"^mkdir -p (\S+)$", self._mkdir)
        self.on(r"^nginx -t$", (0, "", "nginx: configuration file /etc/nginx/nginx.conf test is successful"))
        # Idle stop (bootstrap/steps/idle_stop.py): on, its clock's folder; off, its units and script
        # go at once, the folder after nginx's site stopped logging there.
        self.on(r"^if \[ -e /etc/synthdet/idle-stop\.sh \] \|\| ", self._remove_idle_stop)
        self.on(r"^install -d -m 755 (\S+) && /etc/synthdet/idle-stop\.sh open ", self._mkdir)
        self.on(r"^rm -rf (/var/lib/synthdet-idle)$", self._rmdir)

    def close(self) -> None:
        if self._https is not None:
            self._https.shutdown()
            self._https.server_close()
            self._https = None
        self._tmp.cleanup()

    def _probe_python(self, m: re.Match[str]) -> Answer:
        if m.group(1) != IMAGE_PYTHON.python:
            return 1, "", ""
        probe = {
            "python": IMAGE_PYTHON.python,
            "python_version": IMAGE_PYTHON.python_version,
            "venv": IMAGE_PYTHON.has_venv,
            "torch": IMAGE_PYTHON.torch,
            "torchvision": IMAGE_PYTHON.torchvision,
        }
        return 0, f"/usr/bin/python3.11\n{json.dumps(probe)}\n", ""

    # -- packages, accounts, directories -------------------------------------------
    def _dpkg(self) -> str:
        return "\n\n".join(
            f"Package: {p}\nStatus: install ok installed\nVersion: 1.0" for p in self.installed
        )

    def _apt_install(self, m: re.Match[str]) -> Answer:
        self.installed.update(m.group(1).split())
        return 0, "", ""

    def _getent(self, m: re.Match[str]) -> Answer:
        name = shlex.split(m.group(1))[0]
        if name not in self.accounts:
            return 0, "", ""
        return 0, f"{name}:x:998:998:SynthDet TorchServe:/var/lib/synthdet:/usr/sbin/nologin\n{name}\n", ""

    def _useradd(self, m: re.Match[str]) -> Answer:
        self.accounts.add(m.group(1))
        return 0, "", ""

    def _directories(self, m: re.Match[str]) -> Answer:
        wanted = set(re.findall(r"^  install -d .* (\S+)$", m.string, re.M))
        new = wanted - self.made_dirs
        self.made_dirs |= new
        return 0, "CHANGED\n" if new else "", ""

    def _mkdir(self, m: re.Match[str]) -> Answer:
        self.made_dirs.add(m.group(1))
        return 0, "", ""

    def _rmdir(self, m: re.Match[str]) -> Answer:
        self.made_dirs.discard(m.group(1))
        return 0, "", ""

    def _remove_idle_stop(self, m: re.Match[str]) -> Answer:
        """idle_stop.removal_script: REMOVED when units or script were there, CLOCK_LEFT while the
        clock's folder is."""
        installed = [
            path
            for path in self.files
            if path == "/etc/synthdet/idle-stop.sh" or path.startswith("/etc/systemd/system/synthdet-idle-")
        ]
        for path in installed:
            del self.files[path]
            unit = path.rsplit("/", 1)[1]
            self.enabled.discard(unit)
            self.active.discard(unit)
        out = "REMOVED\n" if installed else ""
        return 0, out + ("CLOCK_LEFT\n" if "/var/lib/synthdet-idle" in self.made_dirs else ""), ""

    # -- systemd, nftables, nginx ------------------------------------------------------
    def _is_enabled(self, m: re.Match[str]) -> Answer:
        unit = m.group(1)
        if "|| systemctl enable" in m.string:
            self.enabled.add(unit)
            return 0, "", ""
        return (0, "enabled\n", "") if unit in self.enabled else (1, "disabled\n", "")

    def _enable(self, m: re.Match[str]) -> Answer:
        self.enabled.add(m.group(1))
        return 0, "", ""

    def _is_active(self, m: re.Match[str]) -> Answer:
        return (0, "active\n", "") if m.group(1) in self.active else (3, "inactive\n", "")

    def _restart(self, m: re.Match[str]) -> Answer:
        unit = m.group(2)
        self.active.add(unit)
        if unit == "nginx":
            self._serve_https()
        if unit.startswith("synthdet-torchserve"):
            self.registered = sorted({*self.registered, *self._load_models()})
        return 0, "", ""

    def _nft_table(self, m: re.Match[str]) -> Answer:
        loaded = "synthdet-firewall.service" in self.active
        return (0, f"table inet {m.group(1)} {{}}\n", "") if loaded else (1, "", "Error: No such file")

    def _link_site(self, m: re.Match[str]) -> Answer:
        link, target = m.group(1), m.group(2)
        out = ""
        if self.links.get(link) != target:
            self.links[link] = target
            out += "CHANGED\n"
        if self.links.pop("/etc/nginx/sites-enabled/default", None):
            out += "REMOVED_DEFAULT\n"
        return 0, out, ""

    def _serve_https(self) -> None:
        """(Re)start "nginx": TLS with the placed certificate, the health path for the secret."""
        if self._https is not None:
            self._https.shutdown()
            self._https.server_close()
        cert, key = Path(self._tmp.name, "cert.pem"), Path(self._tmp.name, "key.pem")
        cert.write_bytes(self.files["/etc/synthdet/tls/cert.pem"].data)
        key.write_bytes(self.files["/etc/synthdet/tls/key.pem"].data)
        health = f"/{self.text('/etc/synthdet/url_secret').strip()}/ping"

        class Health(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                self.send_response(200 if self.path == health else 404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        server = ThreadingHTTPServer(("127.0.0.1", self.https_port), Health)
        server.daemon_threads = True
        server.socket = context.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._https = server

    # -- the service venv ----------------------------------------------------------------
    def _venv_of(self, path: str) -> str | None:
        return next((d for d in self.made_dirs if path.startswith(d + "/") and "/venv-" in d), None)

    def _venv_probe(self, m: re.Match[str]) -> Answer:
        stamp = self.files.get(m.group(2))
        return 0, f"{self.links.get(m.group(1), '')}\n{stamp.data.decode() if stamp else ''}", ""

    def _make_venv(self, m: re.Match[str]) -> Answer:
        self.made_dirs.add(m.group(2))
        return 0, "", ""

    def _verify_venv(self, m: re.Match[str]) -> Answer:
        info = {"torch": "2.8.0", "cuda": None, "cuda_available": False, "ts": "0.12.0"}
        return 0, json.dumps(info) + "\n", ""

    def _switch_venv(self, m: re.Match[str]) -> Answer:
        self.links[m.group(2)] = m.group(1)
        return 0, "", ""

    # -- TorchServe's management API -------------------------------------------------------
    def _load_models(self) -> list[str]:
        config = self.files.get("/etc/synthdet/config.properties")
        line = re.search(r"^load_models=(.*)$", config.data.decode(), re.M) if config else None
        return [entry.split("=")[0] for entry in line.group(1).split(",") if entry] if line else []

    def _management(self, m: re.Match[str]) -> Answer:
        method, path = m.group(1), m.group(2)
        if method == "DELETE":
            self.registered.remove(path.rsplit("/", 1)[1])
            body = "{}"
        elif path == "/models":
            body = json.dumps({"models": [{"modelName": name} for name in self.registered]})
        else:
            name = path.rsplit("/", 1)[1]
            body = json.dumps([{"modelName": name, "workers": [{"status": "READY"}]}])
        return 0, json.dumps({"status": 200, "body": body}), ""

    def _reload(self, m: re.Match[str]) -> Answer:
        if m.group(2) not in self.registered:
            self.registered.append(m.group(2))
        return 0, json.dumps({"status": 200, "body": "{}"}), ""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------- what the steps sent that creates things
@dataclass(frozen=True)
class Created:
    """What commands and placed files create on a host: paths, accounts, enabled units, packages."""

    paths: frozenset[str] = frozenset()
    accounts: frozenset[str] = frozenset()
    units: frozenset[str] = frozenset()
    packages: frozenset[str] = frozenset()


def created_by(commands: list[str], placed: set[str]) -> Created:
    """Read what `commands` create (directories, links, venvs, accounts, units, packages);
    `placed`: the files the steps placed through bootstrap.files."""
    paths = set(placed)
    accounts: set[str] = set()
    units: set[str] = set()
    packages: set[str] = set()
    for cmd in commands:
        paths.update(re.findall(r"install -d (?:-\S+ \S+ )*([^\s;]+)", cmd))
        paths.update(re.findall(r"mkdir -p ([^\s;]+)", cmd))
        paths.update(re.findall(r" -m venv (?:--system-site-packages )?([^\s;]+)", cmd))
        paths.update(re.findall(r"ln -sfn \S+ ([^\s;]+)", cmd))
        paths.update(re.findall(r"mv -Tf \S+ ([^\s;]+)", cmd))
        accounts.update(re.findall(r"^useradd .* (\S+)$", cmd))
        units.update(re.findall(r"systemctl enable (?:--quiet )?(\S+)$", cmd))
        if m := re.search(r"apt-get .* install -y -q --no-install-recommends (.+)$", cmd):
            packages.update(m.group(1).split())
    # A unit is the deploy's when the deploy placed its file (nginx's own unit is the package's).
    units = {unit for unit in units if any(path.endswith(f"/{unit}") for path in placed)}
    return Created(frozenset(paths), frozenset(accounts), frozenset(units), frozenset(packages))


# ---------------------------------------------------- the whole plan against a FakeDebianHost
def deploy_run(host: FakeDebianHost, folder: Path) -> Run:
    """A first deploy's run against `host`: one model with an archive (written into `folder`),
    the health check on the fake nginx's port, no smoke request."""
    mar = folder / "synthdet.mar"
    mar.write_bytes(b"an archive" * 100)
    options = DeployOptions(public_port=host.https_port, smoke=False, health_timeout_s=30)
    return make_run(
        models=(ModelSpec("synthdet", Path("a.pth")),),
        options=options,
        pythons=(IMAGE_PYTHON,),
        host=host,
        public_address="127.0.0.1",
        archives={"synthdet": Archive(mar, sha256_file(mar))},
    )


def run_plan(host: FakeDebianHost, run: Run, state: HostState, steps: Sequence[Step] = ORDER) -> Created:
    """Execute `steps` on `host`; what their commands and placed files created."""
    before = set(host.files)
    sent = len(host.commands)
    execute(run, state, steps)
    return created_by(host.commands[sent:], set(host.files) - before)
