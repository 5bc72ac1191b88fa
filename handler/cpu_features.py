"""What this CPU can do for inference, and which precision a CPU worker runs.

Read from /proc/cpuinfo (the kernel's x86 feature flags) and the CPU topology in
/sys; both are parsed from text, so the choice is unit-tested on recorded flag
lines of other CPUs. What the flags mean for this model was measured
(docs/performance.md):

- AMX (`amx_bf16`: Intel Sapphire Rapids and later) or AVX512_BF16 (also AMD
  Zen 4): bf16 runs natively. A per-stage bf16 pass is 2-3x faster than fp32,
  but it changes detections beyond the accuracy bound on the test checkpoints,
  so it stays opt-in (`precision: bf16`).
- AVX512_VNNI / AVX_VNNI / AVX2 only: no native bf16; oneDNN would emulate it,
  measured slower than fp32. A bf16 request falls back to fp32 there.

Nothing here imports torch: `synthdet doctor` and `synthdet serve` use it too.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
SYS_CPU = Path("/sys/devices/system/cpu")

# The flags that decide the path, best first, as /proc/cpuinfo spells them.
AMX = "amx_bf16"
AVX512_BF16 = "avx512_bf16"
AVX512_VNNI = "avx512_vnni"
AVX_VNNI = "avx_vnni"
AVX2 = "avx2"
REPORTED_FLAGS = (AMX, AVX512_BF16, AVX512_VNNI, AVX_VNNI, AVX2)
NATIVE_BF16_FLAGS = (AMX, AVX512_BF16)


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU this process runs on, as far as inference cares."""

    model: str
    # x86 feature flags; None where the kernel lists none (not x86, no /proc).
    flags: frozenset[str] | None
    physical_cores: int
    logical_cpus: int

    @property
    def known(self) -> bool:
        return self.flags is not None

    @property
    def reported(self) -> tuple[str, ...]:
        """The deciding flags this CPU has, best first."""
        return tuple(flag for flag in REPORTED_FLAGS if flag in (self.flags or ()))

    @property
    def native_bf16(self) -> bool | None:
        """Whether bf16 matrix maths runs in hardware; None: cannot tell (no x86 flags)."""
        if self.flags is None:
            return None
        return any(flag in self.flags for flag in NATIVE_BF16_FLAGS)

    @property
    def capability(self) -> str:
        """One word for the best of it: amx, avx512_bf16, avx512_vnni, avx_vnni, avx2, basic, unknown."""
        if self.flags is None:
            return "unknown"
        return self.reported[0] if self.reported else "basic"

    def describe(self) -> str:
        """'Intel(R) Xeon(R) ..., 2 physical cores (2 logical), amx_bf16 avx512_bf16 ...'."""
        flags = " ".join(self.reported) if self.flags is not None else "flags unknown"
        return (
            f"{self.model}, {self.physical_cores} physical cores ({self.logical_cpus} logical), "
            f"{flags or 'none of ' + '/'.join(REPORTED_FLAGS)}"
        )


@dataclass(frozen=True)
class CpuPlan:
    """The precision a CPU worker runs and why (the worker's startup line says both)."""

    precision: str  # "fp32" or "bf16"
    reason: str
    warning: bool = False  # the operator asked for something this CPU cannot do well


def parse_cpuinfo(text: str) -> tuple[str, frozenset[str] | None]:
    """(model name, x86 flags) from /proc/cpuinfo's text; the first processor's lines."""
    model, flags = "", None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and flags is None:
            flags = frozenset(value.split())
        if model and flags is not None:
            break
    return model or "unknown CPU", flags


def physical_cores(cpus: Iterable[int], sys_cpu: Path = SYS_CPU) -> int:
    """Cores (not hyperthreads) among these logical CPUs, from the kernel's topology.

    Intra-op threads beyond the physical cores only share a core's execution
    units with each other. Where the topology cannot be read, every logical CPU
    counts as a core.
    """
    allowed = sorted(set(cpus))
    cores: set[tuple[str, str]] = set()
    for cpu in allowed:
        topology = sys_cpu / f"cpu{cpu}" / "topology"
        try:
            package = (topology / "physical_package_id").read_text().strip()
            core = (topology / "core_id").read_text().strip()
        except OSError:
            return max(1, len(allowed))
        cores.add((package, core))
    return max(1, len(cores))


def allowed_cpus() -> set[int]:
    """The logical CPUs this process may run on (its affinity: containers, taskset)."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def detect(cpuinfo: Path = CPUINFO, sys_cpu: Path = SYS_CPU) -> CpuFeatures:
    """This machine's CPU features."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        text = ""
    model, flags = parse_cpuinfo(text)
    cpus = allowed_cpus()
    return CpuFeatures(model, flags, physical_cores(cpus, sys_cpu), len(cpus))


def bf16_refusal(cpu: CpuFeatures) -> str | None:
    """Why this CPU should not run bf16 (None: it may). One line, with what to do instead."""
    if cpu.native_bf16 is False:
        return (
            f"precision bf16 needs a CPU with native bf16 (AMX or AVX512_BF16); this one "
            f"({cpu.model}: {' '.join(cpu.reported) or 'neither'}) would emulate it, measured "
            "slower than fp32: use precision fp32 (the default)"
        )
    return None


def choose_precision(requested: str, cpu: CpuFeatures) -> CpuPlan:
    """The precision a CPU worker runs for the setting `requested` (fp32, fp16 or bf16)."""
    if requested == "bf16":
        refusal = bf16_refusal(cpu)
        if refusal:
            return CpuPlan("fp32", f"{refusal}; serving fp32", warning=True)
        if cpu.native_bf16 is None:
            return CpuPlan(
                "bf16",
                "bf16 as set, per stage; could not read this CPU's flags: check it is faster "
                "than fp32 here (benchmarks/bench_inprocess.py)",
                warning=True,
            )
        return CpuPlan(
            "bf16",
            f"bf16 as set, per stage (this CPU has {cpu.capability}); detections differ from "
            "fp32 beyond float rounding",
        )
    if requested == "fp16":
        return CpuPlan("fp32", "fp16 is a GPU setting (slower than fp32 on CPUs): serving fp32")
    if cpu.native_bf16:
        return CpuPlan(
            "fp32",
            f"fp32, exact (default); this CPU has {cpu.capability}: precision bf16 is an opt-in "
            "about 2x faster, check its detections on your model first",
        )
    return CpuPlan("fp32", f"fp32, exact (default; this CPU has {cpu.capability}, no native bf16)")
