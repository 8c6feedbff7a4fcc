"""Benchmark-only Lightning callback: what the training process holds after every epoch, for benchmarks.memory.

Added to a run of train.py from the repository root:
``+callbacks.memory_probe._target_=benchmarks.memory_probe.RecordMemory +callbacks.memory_probe.path=FILE``.
Needs Linux with glibc 2.33 or later (/proc/self/status and mallinfo2).
"""

import ctypes
import gc
import json
import time
from pathlib import Path

import lightning as L


class MallInfo2(ctypes.Structure):
    """glibc's struct mallinfo2, in bytes."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = MallInfo2


def status_mib() -> dict[str, float]:
    """The memory lines of /proc/self/status (VmRSS, VmHWM, RssAnon, RssFile, ...) in MiB."""
    lines = (line.split() for line in Path("/proc/self/status").read_text().splitlines())
    return {fields[0].rstrip(":"): int(fields[1]) / 1024 for fields in lines if fields[-1] == "kB"}


class RecordMemory(L.Callback):
    """As each training epoch ends: collect garbage, then append one JSON line of what the process holds.

    RSS is what the system sees (anonymous memory plus the library code paged in); malloc's in-use bytes are what
    the C allocator has handed out and not had back (tensors included), so RSS that rises while they stay put is
    freed memory the allocator keeps, not a leak. Live objects (len(gc.get_objects())) cover Python's own.
    """

    def __init__(self, path: str):
        self.path = Path(path)
        self.started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        gc.collect()
        status, malloc = status_mib(), mallinfo2()
        record = {
            "epoch": trainer.current_epoch + 1,
            "rss_mib": round(status["VmRSS"], 2),
            "rss_anon_mib": round(status["RssAnon"], 2),
            "rss_file_mib": round(status["RssFile"], 2),
            "peak_rss_mib": round(status["VmHWM"], 2),
            "malloc_in_use_mib": round((malloc.uordblks + malloc.hblkhd) / 2**20, 2),
            "objects": len(gc.get_objects()),
            "seconds": round(time.perf_counter() - self.started, 2),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as file:
            file.write(json.dumps(record) + "\n")
