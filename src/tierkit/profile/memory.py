"""Peak memory of running a model, measured in a fresh process so other sessions do not blur it.

`python -m tierkit.profile.memory REQUEST_JSON` is the child; `peak_memory_mib` starts it.
"""

import json
import subprocess
import sys
from pathlib import Path

from tierkit.errors import TierkitError
from tierkit.profile.settings import HardwareSetting


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def _measure(request: dict) -> float:
    """MiB that opening the session and running it added to the process's peak resident memory."""
    import numpy as np

    from tierkit.profile.latency import setting_session

    setting = HardwareSetting(**{key: request[key] for key in HardwareSetting.__dataclass_fields__})
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to what is resident now
    before = _status_kib("VmRSS")
    session = setting_session(request["path"], setting)
    batch = np.zeros([request["batch"], *request["shape"]], dtype=np.float32)
    for _ in range(request["runs"]):
        session.run(None, {session.get_inputs()[0].name: batch})
    return (_status_kib("VmHWM") - before) / 1024


def peak_memory_mib(path: str | Path, setting: HardwareSetting, shape: list[int], batch: int = 1, runs: int = 20):
    """Peak MiB for loading ``path`` and running it at ``batch``; None where /proc is missing (not Linux)."""
    if not Path("/proc/self/clear_refs").exists():
        return None
    request = {"path": str(path), "shape": list(shape), "batch": batch, "runs": runs, **setting.as_row()}
    child = subprocess.run(
        [sys.executable, "-m", "tierkit.profile.memory", json.dumps(request)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if child.returncode != 0:
        raise TierkitError(
            f"measuring the memory of {path} failed: {child.stderr.strip().splitlines()[-1:]}",
            where=str(path),
            fix="check that the file opens in ONNX Runtime (python -m tierkit.runtime predict)",
        )
    return round(json.loads(child.stdout)["peak_memory_mib"], 3)


if __name__ == "__main__":
    print(json.dumps({"peak_memory_mib": _measure(json.loads(sys.argv[1]))}))
