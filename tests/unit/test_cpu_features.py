"""What a CPU can do, read from /proc/cpuinfo and /sys topology text, and the precision chosen.

The flag lines are recorded: no test depends on the CPU it runs on. The first is
this project's development machine, verbatim; the others as those CPUs' kernels
list them (the flags that decide the path are all there; many others are left out).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from handler.cpu_features import (
    CpuFeatures,
    bf16_refusal,
    choose_precision,
    detect,
    parse_cpuinfo,
    physical_cores,
)

SAPPHIRE_RAPIDS = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 167
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ss ht syscall nx pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology nonstop_tsc cpuid tsc_known_freq pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave avx f16c rdrand hypervisor lahf_lm abm 3dnowprefetch cpuid_fault fsgsbase tsc_adjust bmi1 hle avx2 smep bmi2 erms invpcid rtm avx512f avx512dq rdseed adx smap avx512ifma clflushopt clwb avx512cd sha_ni avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves avx_vnni avx512_bf16 arat avx512vbmi umip avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni avx512_bitalg avx512_vpopcntdq rdpid cldemote movdiri movdir64b fsrm serialize tsxldtrk amx_bf16 avx512_fp16 amx_tile amx_int8 arch_capabilities

processor\t: 1
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu sse2 avx2
"""  # noqa: E501
EPYC_GENOA = """processor\t: 0
model name\t: AMD EPYC 9B14
flags\t\t: fpu sse sse2 ht syscall nx mmxext pdpe1gb rdtscp lm pni ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt aes xsave avx f16c avx2 bmi2 avx512f avx512dq avx512ifma avx512cd avx512bw avx512vl avx512_bf16 avx512vbmi avx512_vbmi2 gfni vaes avx512_vnni avx512_bitalg avx512_vpopcntdq
"""  # noqa: E501
CASCADE_LAKE = """processor\t: 0
model name\t: Intel(R) Xeon(R) CPU @ 2.80GHz
flags\t\t: fpu sse sse2 ht syscall nx pdpe1gb rdtscp lm pni ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt aes xsave avx f16c avx2 bmi2 avx512f avx512dq avx512cd avx512bw avx512vl pku ospke avx512_vnni md_clear
"""  # noqa: E501
ALDER_LAKE = """processor\t: 0
model name\t: 12th Gen Intel(R) Core(TM) i7-1260P
flags\t\t: fpu sse sse2 ht pni ssse3 fma sse4_1 sse4_2 movbe popcnt aes xsave avx f16c avx2 bmi2 sha_ni avx_vnni gfni vaes
"""  # noqa: E501
HASWELL = """processor\t: 0
model name\t: Intel(R) Xeon(R) CPU @ 2.30GHz
flags\t\t: fpu sse sse2 ht pni ssse3 fma sse4_1 sse4_2 movbe popcnt aes xsave avx f16c avx2 bmi2
"""
GRAVITON3 = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics sve svebf16 i8mm bf16 dgh rng
CPU implementer\t: 0x41
"""


def cpu(text: str, cores: int = 2) -> CpuFeatures:
    model, flags = parse_cpuinfo(text)
    return CpuFeatures(model, flags, cores, cores)


@pytest.mark.parametrize(
    ("text", "capability", "reported", "native_bf16"),
    [
        (SAPPHIRE_RAPIDS, "amx_bf16", ("amx_bf16", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx2"), True),
        (EPYC_GENOA, "avx512_bf16", ("avx512_bf16", "avx512_vnni", "avx2"), True),
        (CASCADE_LAKE, "avx512_vnni", ("avx512_vnni", "avx2"), False),
        (ALDER_LAKE, "avx_vnni", ("avx_vnni", "avx2"), False),
        (HASWELL, "avx2", ("avx2",), False),
        ("model name\t: old\nflags\t\t: fpu sse sse2\n", "basic", (), False),
        (GRAVITON3, "unknown", (), None),
        ("", "unknown", (), None),
    ],
    ids=["sapphire-rapids", "epyc-genoa", "cascade-lake", "alder-lake", "haswell", "basic", "arm", "none"],
)
def test_flags_say_what_the_cpu_can_do(
    text: str, capability: str, reported: tuple[str, ...], native_bf16: bool | None
) -> None:
    found = cpu(text)
    assert found.capability == capability
    assert found.reported == reported
    assert found.native_bf16 is native_bf16


def test_the_first_processor_and_its_model_name_are_read() -> None:
    model, flags = parse_cpuinfo(SAPPHIRE_RAPIDS)
    assert model == "Intel(R) Xeon(R) Processor"
    assert flags is not None and "amx_tile" in flags and len(flags) > 3  # not processor 1's short line
    assert parse_cpuinfo(GRAVITON3) == ("unknown CPU", None)


def test_describe_names_the_cpu_its_cores_and_flags() -> None:
    text = CpuFeatures("AMD EPYC 9B14", parse_cpuinfo(EPYC_GENOA)[1], 4, 8).describe()
    assert text == "AMD EPYC 9B14, 4 physical cores (8 logical), avx512_bf16 avx512_vnni avx2"
    assert "flags unknown" in cpu(GRAVITON3).describe()


def test_default_is_exact_fp32_on_every_cpu() -> None:
    for text in (SAPPHIRE_RAPIDS, EPYC_GENOA, CASCADE_LAKE, HASWELL, GRAVITON3):
        plan = choose_precision("fp32", cpu(text))
        assert plan.precision == "fp32" and "exact" in plan.reason and not plan.warning


def test_a_cpu_with_native_bf16_suggests_it_and_runs_it_when_asked() -> None:
    for text in (SAPPHIRE_RAPIDS, EPYC_GENOA):
        assert "precision bf16" in choose_precision("fp32", cpu(text)).reason
        plan = choose_precision("bf16", cpu(text))
        assert plan.precision == "bf16" and not plan.warning and "per stage" in plan.reason
    assert "precision bf16" not in choose_precision("fp32", cpu(HASWELL)).reason


@pytest.mark.parametrize("text", [CASCADE_LAKE, ALDER_LAKE, HASWELL])
def test_bf16_without_native_support_is_refused_and_fp32_served(text: str) -> None:
    refusal = bf16_refusal(cpu(text))
    assert refusal is not None and "AMX or AVX512_BF16" in refusal and "fp32" in refusal
    plan = choose_precision("bf16", cpu(text))
    assert plan.precision == "fp32" and plan.warning and "serving fp32" in plan.reason


def test_bf16_where_the_flags_are_unknown_runs_with_a_warning() -> None:
    assert bf16_refusal(cpu(GRAVITON3)) is None
    plan = choose_precision("bf16", cpu(GRAVITON3))
    assert plan.precision == "bf16" and plan.warning and "could not read" in plan.reason


def test_fp16_is_never_run_on_a_cpu() -> None:
    plan = choose_precision("fp16", cpu(SAPPHIRE_RAPIDS))
    assert plan.precision == "fp32" and "GPU" in plan.reason


def _topology(root: Path, cpu_id: int, package: int, core: int) -> None:
    folder = root / f"cpu{cpu_id}" / "topology"
    folder.mkdir(parents=True)
    (folder / "physical_package_id").write_text(f"{package}\n")
    (folder / "core_id").write_text(f"{core}\n")


def test_hyperthreads_count_once(tmp_path: Path) -> None:
    # 2 sockets x 2 cores x 2 threads; cpu N and N+4 are siblings (Linux's usual numbering).
    for cpu_id in range(8):
        _topology(tmp_path, cpu_id, package=(cpu_id % 4) // 2, core=cpu_id % 2)
    assert physical_cores(range(8), tmp_path) == 4
    assert physical_cores({0, 4}, tmp_path) == 1  # a container pinned to one core's two threads
    assert physical_cores({0, 1, 2}, tmp_path) == 3


def test_without_topology_every_logical_cpu_counts(tmp_path: Path) -> None:
    assert physical_cores({0, 1, 2}, tmp_path) == 3
    assert physical_cores(set(), tmp_path) == 1


def test_detect_reads_the_files_it_is_given(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(CASCADE_LAKE)
    found = detect(info, tmp_path / "no-sys")
    assert found.model == "Intel(R) Xeon(R) CPU @ 2.80GHz" and found.capability == "avx512_vnni"
    assert found.physical_cores == found.logical_cpus >= 1
    assert detect(tmp_path / "missing", tmp_path).flags is None


def test_serve_refuses_bf16_before_starting_on_a_cpu_without_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from handler import cpu_features
    from synthdet import local_serve
    from synthdet.cli import app

    monkeypatch.setattr(local_serve, "visible_gpus", lambda: 0)
    monkeypatch.setattr(cpu_features, "detect", lambda: cpu(CASCADE_LAKE))
    result = CliRunner().invoke(app, ["serve", "--demo-model", "--precision", "bf16"])
    assert result.exit_code == 1
    assert "AMX or AVX512_BF16" in result.output and "leave out --precision" in result.output
    # The same request on a CPU with AMX passes the check (and would start serving: not here).
    monkeypatch.setattr(cpu_features, "detect", lambda: cpu(SAPPHIRE_RAPIDS))
    result = CliRunner().invoke(app, ["serve", "--precision", "bf16"])
    assert result.exit_code == 1 and "no model given" in result.output
