"""What an exported file computes on each CPU class it may ship to, measured here or emulated.

An INT8 file is measured on the exporting machine, but a device of another CPU class may compute it differently
(x86 without VNNI saturates full-range weights). Every variant records the classes it is exact on and its accuracy
on each class, so the manifest reports the accuracy the device will see.
"""

from pathlib import Path

from tierkit.onnxio.verify import onnx_accuracy
from tierkit.quant.kernel_emulation import EmulatedSession, weight_bits
from tierkit.runtime.cpu import CPU_CLASSES, X86_NO_VNNI, X86_VNNI, cpu_class, exact_cpu_classes


def int8_cpu_facts(path: Path, datamodule, measured_accuracy: float) -> dict:
    """Weight bits, exact CPU classes and per-class accuracy of an INT8 file.

    Every class computes 7-bit weights alike. Full-range weights give two results: exact sums (x86 with VNNI,
    ARM) and saturated ones (x86 without VNNI). The one this machine computes is measured in ONNX Runtime, the
    other is emulated. ``accuracy`` is the figure on the classes the file is exact on, where it may ship.
    """
    bits = weight_bits(path)
    exact = exact_cpu_classes(bits)
    measured = {"accuracy": measured_accuracy, "how": "onnxruntime"}
    if set(exact) == set(CPU_CLASSES):
        by_class = {c: dict(measured) for c in CPU_CLASSES}
    else:
        saturating_here = cpu_class() == X86_NO_VNNI
        other = X86_VNNI if saturating_here else X86_NO_VNNI
        emulated = {"accuracy": onnx_accuracy(EmulatedSession(path, other), datamodule), "how": "emulated"}
        by_class = {c: dict(measured if (c == X86_NO_VNNI) == saturating_here else emulated) for c in CPU_CLASSES}
    return {
        "weight_bits": bits,
        "cpu_classes": exact,
        "accuracy_by_cpu": by_class,
        "accuracy": by_class[exact[0]]["accuracy"],
    }


def float_cpu_facts(measured_accuracy: float) -> dict:
    """A float file computes the same on every CPU class."""
    return {
        "cpu_classes": list(CPU_CLASSES),
        "accuracy_by_cpu": {c: {"accuracy": measured_accuracy, "how": "onnxruntime"} for c in CPU_CLASSES},
    }
