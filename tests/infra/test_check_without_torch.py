"""The Pulumi program and the pre-flight check run on a machine without torch.

The deploying machine needs torch only where the bootstrap reads a checkpoint
before connecting (bootstrap/steps/upload_model.check_models); the program,
its modules, the check and the cloud SDK layer do not import it, so a CPU-only
torch (docs/pulumi.md: the deploying machine) is all that machine needs.

Run in a fresh interpreter where `import torch` / `import torchvision` fail.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

NO_TORCH = textwrap.dedent(
    """
    import importlib.abc, sys

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "torchvision"):
                raise ImportError(f"{name} is not installed on this machine (test)")
            return None

    sys.meta_path.insert(0, NoTorch())
    """
)


def run(script: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", NO_TORCH + textwrap.dedent(script)],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SYNTHDET_CONFIG_DIR": str(tmp_path / "cfg")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_blocker_itself_works(tmp_path: Path) -> None:
    done = run("import torch", tmp_path)
    assert done.returncode != 0 and "is not installed on this machine (test)" in done.stderr


def test_the_programs_modules_and_the_check_import_without_torch(tmp_path: Path) -> None:
    done = run(
        """
        import infra.__main__, infra.preflight, infra.gcp.preflight, infra.aws.preflight
        import infra.gcp.cloud_api, infra.aws.cloud_api, infra.bootstrap_resource
        import synthdet.cli, synthdet.cloud_up
        print("imported", sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision")))
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "imported []"


def test_the_single_host_program_runs_under_mocks_without_torch(tmp_path: Path) -> None:
    checkpoint = tmp_path / "synthdet.pth"
    checkpoint.write_bytes(b"bytes the program only hashes")
    done = run(
        f"""
        import infra.network
        infra.network.my_public_ipv4 = lambda timeout_s=5.0: "198.51.100.7"
        from tests.infra.harness import BOOTSTRAP_TYPE, run_program
        run = run_program("aws-t4", {{"synthdet:model": {str(checkpoint)!r}}})
        print(len(run.of_type(BOOTSTRAP_TYPE)), sorted(run.outputs)[:3])
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "1"
