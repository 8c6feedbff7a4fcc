"""CPU classes that compute ONNX Runtime's INT8 kernels differently, and which class a machine belongs to.

ONNX Runtime multiplies unsigned 8-bit activations by signed 8-bit weights. With VNNI (x86) or the dot-product
instructions of ARM, each product is accumulated in 32 bits and the result is exact. x86 CPUs without VNNI use
VPMADDUBSW, which adds two neighbouring products into a signed 16-bit lane that saturates: 255·127 + 255·127
does not fit. Weights in 7 bits (at most 64 in magnitude) keep every pair inside the lane, so those files are
exact everywhere.
"""

import os
from pathlib import Path

VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
FLAGS_VARIABLE = "TIERKIT_CPU_FLAGS"

X86_VNNI = "x86_vnni"
X86_NO_VNNI = "x86_no_vnni"
ARM = "arm"
CPU_CLASSES = (X86_VNNI, X86_NO_VNNI, ARM)
UNKNOWN_CPU = "unknown_cpu"
# Where a tier's pick is made: each CPU class, and a device whose description does not say its class.
SHIPPING_TARGETS = (*CPU_CLASSES, UNKNOWN_CPU)
TARGET_NAMES = {
    X86_VNNI: "x86 with VNNI",
    X86_NO_VNNI: "x86 without VNNI (AVX2 or AVX-512 alone)",
    ARM: "ARM",
    UNKNOWN_CPU: "a CPU of unknown class (no cpu_flags)",
}
REDUCED_WEIGHT_BITS = 7


def cpu_flags() -> set[str]:
    """This machine's CPU feature flags (x86 'flags', ARM 'Features'); empty where /proc/cpuinfo is absent.

    ``TIERKIT_CPU_FLAGS`` (space-separated) replaces them: under a user-mode CPU emulator such as qemu-user,
    /proc/cpuinfo describes the host, not the CPU the programs actually run on.
    """
    override = os.environ.get(FLAGS_VARIABLE)
    if override is not None:
        return set(override.split())
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return set()
    for line in cpuinfo.read_text().splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_class(flags: set[str] | list[str] | None = None) -> str | None:
    """The INT8 kernel class of a CPU from its feature flags; None when the flags say neither x86 nor ARM."""
    flags = cpu_flags() if flags is None else set(flags)
    if any(flag.startswith(("sse", "avx")) for flag in flags):
        return X86_VNNI if any(flag in flags for flag in VNNI_FLAGS) else X86_NO_VNNI
    if {"asimd", "neon"} & flags:
        return ARM
    return None


def needs_reduced_range(flags: set[str] | None = None) -> bool:
    """x86 without VNNI multiplies u8 x s8 in 16-bit lanes that can saturate: 7-bit weights avoid that."""
    return cpu_class(flags) == X86_NO_VNNI


def exact_cpu_classes(weight_bits: int) -> list[str]:
    """The CPU classes on which an INT8 file with weights of ``weight_bits`` computes exactly what it was judged on.

    Full-range weights are not trusted on x86 without VNNI even where no pair of today's weights happens to
    saturate: which products are paired is a detail of one ONNX Runtime kernel, not a property of the file.
    """
    return list(CPU_CLASSES) if weight_bits <= REDUCED_WEIGHT_BITS else [X86_VNNI, ARM]


def exact_on_target(exact_classes: list[str], target: str) -> bool:
    """Whether a file exact on ``exact_classes`` is safe for ``target``: an unknown CPU needs exactness on all."""
    return set(CPU_CLASSES) <= set(exact_classes) if target == UNKNOWN_CPU else target in exact_classes
