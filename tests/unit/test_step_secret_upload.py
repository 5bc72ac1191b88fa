"""The URL-secret and upload-model steps on their own, against a fake host."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from bootstrap.api import DeployOptions
from bootstrap.steps import secret, upload_model
from bootstrap.steps.base import SECRET_FILE, SERVICE_USER, Archive, DeployError, Run
from bootstrap.steps.layout import Layout
from serving.inputs import sha256_file
from serving.models import ModelSpec
from tests.support.fake_host import SECRET, FakeRunner, make_run

LAYOUT = Layout(SERVICE_USER)


def test_secrets() -> None:
    generated = secret.new_secret()
    assert secret.SECRET_PATTERN.match(generated) and len(generated) == 32
    assert secret.check_secret(SECRET) == SECRET
    for bad in ("short", "has/slash" * 3, "spaces are bad here!", "ü" * 20):
        with pytest.raises(DeployError, match="16-128 characters"):
            secret.check_secret(bad)


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
    done = secret.apply(make_run(host=host, options=DeployOptions(url_secret=wanted)), LAYOUT)
    assert (done.detail, done.changed) == (detail, changed)
    value = done.output.value
    assert host.text(SECRET_FILE) == value + "\n" and host.files[SECRET_FILE].mode == "600"
    assert value == (wanted or stored or value) and secret.SECRET_PATTERN.match(value)


def test_upload_places_a_changed_archive_privately_and_skips_an_unchanged_one(tmp_path: Path) -> None:
    mar = tmp_path / "synthdet.mar"
    mar.write_bytes(b"archive bytes" * 100)
    host = FakeRunner().on(r"^df -P -B1 ", "99999999999\n")
    sent: list[int] = []
    progress = SimpleNamespace(upload=lambda label, done, total: sent.append(done))
    run = make_run(host=host, archives={"synthdet": Archive(mar, sha256_file(mar))})
    run = replace(run, progress=progress)  # type: ignore[arg-type]
    done = upload_model.apply(run, LAYOUT)
    assert done.changed and done.output == upload_model.ModelStore({"synthdet": sha256_file(mar)})
    placed = host.files["/var/lib/synthdet/model-store/synthdet.mar"]
    assert placed.data == mar.read_bytes()
    assert (placed.owner, placed.mode) == (f"root:{SERVICE_USER}", "640")
    assert sent[0] == 0 and sent[-1] == mar.stat().st_size  # progress from 0 to the whole file
    host.commands.clear()
    assert not upload_model.apply(run, LAYOUT).changed
    assert not host.ran(r"cat > ")


def test_upload_is_refused_up_front_when_the_disk_cannot_hold_it() -> None:
    size = 170 * 2**20

    def with_df(answer: tuple[int, str, str]) -> Run:
        return make_run(host=FakeRunner().on(r"^df -P -B1 /var/lib/synthdet/model-store", answer))

    upload_model.check_space(with_df((0, f"{size + upload_model.SPARE_BYTES}\n", "")), "synthdet", size)
    with pytest.raises(DeployError, match=r"not enough disk space .* synthdet\.mar.* still served"):
        upload_model.check_space(with_df((0, f"{size}\n", "")), "synthdet", size)
    upload_model.check_space(with_df((1, "", "df: no")), "synthdet", size)  # df failed: let the upload try


def test_a_bad_checkpoint_is_refused_before_connecting(tmp_path: Path, unity_checkpoint: Path) -> None:
    good = unity_checkpoint
    upload_model.check_models([ModelSpec("synthdet", good)])
    not_a_checkpoint = tmp_path / "notes.pth"
    not_a_checkpoint.write_text("these are my notes")
    with pytest.raises(
        DeployError, match=r"model synthdet: .*notes\.pth is not a loadable PyTorch checkpoint"
    ):
        upload_model.check_models([ModelSpec("synthdet", not_a_checkpoint)])
    with pytest.raises(FileNotFoundError, match="missing.pth for model other not found"):
        upload_model.check_models([ModelSpec("synthdet", good), ModelSpec("other", tmp_path / "missing.pth")])
    with pytest.raises(ValueError, match="unique"):
        upload_model.check_models([ModelSpec("synthdet", good), ModelSpec("synthdet", good)])
    with pytest.raises(ValueError, match="at least one model"):
        upload_model.check_models([])
