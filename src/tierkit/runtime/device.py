"""What the device can run: cores, memory, CPU and ONNX Runtime providers, detected or described in JSON."""

import os
import platform
from dataclasses import asdict, dataclass, field

import onnxruntime as ort

from tierkit.runtime.cpu import cpu_flags

_FIELDS = ("cores", "memory_mib", "cpu_model", "cpu_flags", "providers")


@dataclass
class DeviceInfo:
    """A device as selection sees it; ``memory_mib`` is 0 where the platform does not report it."""

    cores: int
    memory_mib: int
    cpu_model: str = "unknown"
    cpu_flags: list[str] = field(default_factory=list)
    providers: list[str] = field(default_factory=lambda: ["CPUExecutionProvider"])

    @classmethod
    def from_dict(cls, data: dict, where: str = "device description") -> "DeviceInfo":
        """A described device, e.g. to pick the variant for a phone from a laptop; cores and memory_mib are required."""
        fix = (
            'describe the device as {"cores": 4, "memory_mib": 2048, "providers": ["CPUExecutionProvider"]} '
            '(optional: "cpu_model", "cpu_flags")'
        )
        if not isinstance(data, dict):
            raise ValueError(f"{where}: must be a JSON object, got {type(data).__name__}. Fix: {fix}")
        unknown = sorted(set(data) - set(_FIELDS))
        missing = [key for key in ("cores", "memory_mib") if key not in data]
        if unknown or missing:
            problem = f"unknown keys {unknown}" if unknown else f"missing keys {missing}"
            raise ValueError(f"{where}: {problem}; the keys are {list(_FIELDS)}. Fix: {fix}")
        device = cls(**data)
        for key, ok, expected in (
            ("cores", _is_int(device.cores) and device.cores >= 1, "an integer >= 1"),
            ("memory_mib", _is_int(device.memory_mib) and device.memory_mib >= 0, "an integer >= 0"),
            ("cpu_model", isinstance(device.cpu_model, str), "a string"),
            ("cpu_flags", _is_strings(device.cpu_flags), "an array of strings"),
            ("providers", _is_strings(device.providers) and bool(device.providers), "a non-empty array of strings"),
        ):
            if not ok:
                raise ValueError(f"{where}: {key} must be {expected}, got {getattr(device, key)!r}. Fix: {fix}")
        return device

    def to_dict(self) -> dict:
        return asdict(self)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _cores() -> int:
    """Cores this process may use: the affinity mask (respects taskset and container pinning) where it exists."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _memory_mib() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    except (AttributeError, OSError, ValueError):  # Windows has no sysconf
        return 0


def _cpu() -> tuple[str, list[str]]:
    """CPU model from /proc/cpuinfo (x86 'model name', ARM 'Hardware') and the feature flags ``cpu_flags`` reads."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep:
                    info.setdefault(key.strip().lower(), value.strip())
    except OSError:
        pass
    model = info.get("model name") or info.get("hardware") or info.get("model") or platform.processor()
    return model or platform.machine() or "unknown", sorted(cpu_flags())


def detect_device() -> DeviceInfo:
    """The machine this process runs on."""
    model, flags = _cpu()
    return DeviceInfo(
        cores=_cores(),
        memory_mib=_memory_mib(),
        cpu_model=model,
        cpu_flags=flags,
        providers=list(ort.get_available_providers()),
    )
