"""doctor's verdict says what it measured, and never a speed it did not measure."""

from __future__ import annotations

import pytest

from handler.cpu_features import CpuFeatures
from synthdet import doctor
from synthdet.doctor import Report, cpu_advice, verdict


@pytest.mark.parametrize(
    ("report", "says", "never"),
    [
        (Report(ready=True, frame_s=None), "speed not measured; without --quick", "ms per frame"),
        (Report(ready=True, frame_s=3.2), "3200 ms per frame here): it works, but", "usually"),
        (Report(ready=True, frame_s=0.9), "READY on CPU (900 ms per frame here)", "timeout"),
        (Report(ready=True, gpu=True, frame_s=0.05), "READY: GPU serving (50 ms per frame here)", "CPU"),
        (Report(ready=False, frame_s=0.05), "NOT READY", "per frame"),
    ],
    ids=["cpu, --quick", "slow cpu", "fast cpu", "gpu", "not ready"],
)
def test_the_verdict_quotes_only_what_was_measured(report: Report, says: str, never: str) -> None:
    text = verdict(report)
    assert says in text and never not in text


def _cpu(flags: str | None) -> CpuFeatures:
    return CpuFeatures("Test CPU", None if flags is None else frozenset(flags.split()), 4, 8)


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        ("avx2 avx512_vnni avx512_bf16 amx_bf16 amx_tile", "AMX: `--precision bf16`"),
        ("avx2 avx512_vnni avx512_bf16", "AVX512_BF16 without AMX"),
        ("avx2 avx512_vnni", "no native bf16 (avx512_vnni)"),
        ("avx2", "no native bf16 (avx2)"),
        (None, "could not read"),
    ],
    ids=["amx", "avx512-bf16", "vnni", "avx2", "unknown"],
)
def test_cpu_advice_names_the_flag_and_keeps_fp32_the_default(flags: str | None, says: str) -> None:
    precision, advice = cpu_advice(_cpu(flags))
    assert precision.startswith("fp32, exact")
    assert says in advice
    # bf16 is only ever suggested together with checking its detections on the user's own model.
    assert ("--precision bf16" in advice) is ("YOUR model" in advice) is ("stay on fp32" not in advice)


def test_doctor_reports_the_cpu_and_its_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor, "detect", lambda: _cpu("avx2 avx512_vnni"))
    report = doctor.diagnose(measure=False)
    checks = {check.name: check for check in report.checks}
    assert checks["CPU"].value == "Test CPU, 4 physical cores (8 logical), avx512_vnni avx2"
    if not report.gpu:
        assert (
            checks["CPU precision"].value.startswith("fp32")
            and "stay on fp32" in checks["CPU precision"].hint
        )
