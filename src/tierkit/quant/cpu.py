"""CPU features that decide how INT8 models should be quantized."""

from pathlib import Path

VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def cpu_flags() -> set[str]:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return set()
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def needs_reduced_range(flags: set[str] | None = None) -> bool:
    """x86 without VNNI multiplies u8 x s8 in 16-bit lanes that can saturate: 7-bit weights avoid that."""
    flags = cpu_flags() if flags is None else flags
    is_x86 = any(flag.startswith(("sse", "avx")) for flag in flags)
    return is_x86 and not any(flag in flags for flag in VNNI_FLAGS)
