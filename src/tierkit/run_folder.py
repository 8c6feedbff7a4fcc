"""A run folder and its results: the one place that knows where a run keeps things and what metrics.json holds.

Train, fine-tune, export, tracking, the console summary and the SLURM requeue all go through ``RunFolder`` for
paths and through ``RunMetrics`` (and its ``QuantizationReport``) for results, so a field or a folder is named once.
metrics.json carries ``schema_version``; a reader refuses a newer schema instead of misreading it.
"""

import json
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, ClassVar

from tierkit.errors import TierkitError
from tierkit.utils.files import write_json

# 2: the schema written down (version 1 files, from before, hold the same fields without the version).
SCHEMA_VERSION = 2


def _plain(value: Any) -> Any:
    """A result as JSON data; a None field is left out unless its class lists it in ``KEEP_NONE``."""
    if not is_dataclass(value):
        return value
    keep = getattr(value, "KEEP_NONE", ())
    items = ((item.name, getattr(value, item.name)) for item in fields(value))
    return {name: _plain(item) for name, item in items if item is not None or name in keep}


@dataclass
class ModelSummary:
    """A trained model as the run summary shows it (the student, or the teacher it distilled from)."""

    architecture: str
    test_acc: float | None
    params: int
    macs: int
    size_bytes: int
    val_acc_best: float | None = None
    agreement: float | None = None
    # A teacher's: its file, the format its weights came in, and its validation accuracy before distilling.
    source: str | None = None
    weights_format: str | None = None
    val_acc: float | None = None
    int8_bytes: int | None = None
    int8_test_acc: float | None = None


@dataclass
class OnnxScores:
    """One ONNX file the quantization stage wrote, with its accuracy in ONNX Runtime."""

    file: str
    bytes: int
    val_acc: float
    test_acc: float
    drop: float | None = None
    float_compute_ops: list[str] | None = None
    pytorch_test_acc: float | None = None
    checkpoint: str | None = None
    sha256: str | None = None
    # Post-training INT8 beyond the configured recipe (the "tuned" file): its calibration method, per-channel choice
    # and the layers left in float.
    recipe: dict[str, Any] | None = None


@dataclass
class QuantizationReport:
    """What the quantization stage measured and which INT8 path it chose, and why.

    Paths: ``ptq`` (post-training, as configured), ``tuned`` (post-training with another calibration and/or layers
    in higher precision), ``qat`` (quantization-aware training). ``steps`` lists every candidate measured, cheapest
    first.
    """

    max_drop_vs_fp32: float
    reduce_range: bool
    per_channel: bool
    path: str = "ptq"
    budget_met: bool | None = None
    reason: str = ""
    # The checkpoint the FP32, FP16 and PTQ files were made from.
    source_checkpoint: str | None = None
    # Calibration settings and the digest of the samples, so export can tell whether it would make the same file.
    calibration: dict[str, Any] | None = None
    # The layers post-training INT8 left in float as configured (quantization.float_first_layer).
    float_layers: list[str] = field(default_factory=list)
    fp32: OnnxScores | None = None
    fp16: OnnxScores | None = None
    ptq: OnnxScores | None = None
    tuned: OnnxScores | None = None
    qat: OnnxScores | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)
    # The per-layer sensitivity report, relative to the run folder, and its most sensitive layers.
    sensitivity: str | None = None
    sensitive_layers: list[str] | None = None

    FILES: ClassVar[tuple[str, ...]] = ("fp32", "fp16", "ptq", "tuned", "qat")

    def shipped(self) -> OnnxScores:
        return getattr(self, self.path)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "QuantizationReport":
        files = {key: OnnxScores(**data[key]) for key in cls.FILES if data.get(key)}
        rest = {key: value for key, value in data.items() if key not in files}
        return cls(**rest, **files)


@dataclass
class FinetuneReport:
    """Accuracy before and after fine-tuning on the target device's data, and what it won back."""

    KEEP_NONE: ClassVar[tuple[str, ...]] = ("shift", "recovered_fraction")

    source_run: str
    source_checkpoint: str
    shift: dict[str, Any] | None
    alpha: float
    before: dict[str, float]
    after: dict[str, float]
    shift_cost_points: float
    regained_points: float
    recovered_fraction: float | None
    structure_unchanged: bool


@dataclass
class TierVerdict:
    """The run's best candidate model against its tier's budgets, checked when the run ends (export checks again
    on the machines it profiles). ``checks`` holds, per budget, the measured value, the budget and PASS/MISS/None
    (None: not measured here)."""

    candidate: str
    passed: bool
    checks: dict[str, dict[str, Any]]
    reason: str


@dataclass
class RunMetrics:
    """metrics.json: one run's results, section by section."""

    KEEP_NONE: ClassVar[tuple[str, ...]] = ("epochs",)

    tier: str
    seed: int | None
    epochs: int | None
    student: ModelSummary
    checkpoints: dict[str, str]
    stage: str = "train"
    teacher: ModelSummary | None = None
    pruning: dict[str, Any] | None = None
    quantization: QuantizationReport | None = None
    finetune: FinetuneReport | None = None
    verdict: TierVerdict | None = None
    train_seconds: float | None = None
    schema_version: int = field(default=SCHEMA_VERSION)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: sections a run does not have, and unset fields inside them, are left out."""
        return _plain(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "metrics.json") -> "RunMetrics":
        version = data.get("schema_version", 1)
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise TierkitError(
                f"{where} is in schema version {version!r}; this tierkit reads versions up to {SCHEMA_VERSION}",
                where=where,
                fix="read it with the tierkit release that wrote it, or upgrade tierkit",
            )
        data = {**data, "schema_version": SCHEMA_VERSION}
        try:
            sections = (
                ("student", ModelSummary),
                ("teacher", ModelSummary),
                ("finetune", FinetuneReport),
                ("verdict", TierVerdict),
            )
            for key, kind in sections:
                if data.get(key) is not None:
                    data[key] = kind(**data[key])
            if data.get("quantization") is not None:
                data["quantization"] = QuantizationReport.from_dict(data["quantization"])
            return cls(**data)
        except TypeError as exc:  # a field this schema lacks, or one it needs missing
            raise TierkitError(
                f"{where} does not match metrics schema {SCHEMA_VERSION} ({exc})",
                where=where,
                fix="it was edited by hand or written by another tool: re-run the run, or restore the file",
            ) from exc


@dataclass(frozen=True)
class RunFolder:
    """Every path of one run folder (``outputs/<date>/<time>`` or one job of a sweep)."""

    root: Path

    @property
    def metrics_file(self) -> Path:
        return self.root / "metrics.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def qat_checkpoints(self) -> Path:
        """The QAT stage's own checkpoints (and its requeue checkpoint), apart from the FP32 fit's."""
        return self.checkpoints / "qat"

    @property
    def quantization(self) -> Path:
        """The ONNX files the quantization stage wrote and judged."""
        return self.root / "quantization"

    @property
    def teacher_work(self) -> Path:
        """Where a teacher trains inside the run; removed once the teacher is cached."""
        return self.root / "teacher"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def checkpoint(self, name: str, qat: bool = False) -> Path:
        """``best`` or ``last`` of the FP32 fit, or of the QAT stage."""
        return (self.qat_checkpoints if qat else self.checkpoints) / f"{name}.ckpt"

    def resumable_checkpoints(self) -> list[Path]:
        """Checkpoints a stopped run can go on from, either stage, that exist."""
        candidates = [self.checkpoint("last", qat=True), self.checkpoint("last")]
        return [path for path in candidates if path.is_file()]

    def requeue_checkpoints(self) -> list[Path]:
        """Checkpoints a requeued SLURM job may resume from: Lightning's hpc_ckpt files and the last ones."""
        return [
            *self.root.glob("hpc_ckpt_*.ckpt"),
            *self.qat_checkpoints.glob("hpc_ckpt_*.ckpt"),
            *self.resumable_checkpoints(),
        ]

    def read_metrics(self) -> RunMetrics | None:
        """The run's results, or None when it has not finished (no metrics.json)."""
        if not self.metrics_file.is_file():
            return None
        try:
            data = json.loads(self.metrics_file.read_text())
        except json.JSONDecodeError as exc:
            raise TierkitError(
                f"{self.metrics_file} is not valid JSON ({exc})",
                where=str(self.metrics_file),
                fix="re-run the run, or delete metrics.json to treat it as unfinished",
            ) from exc
        return RunMetrics.from_dict(data, where=str(self.metrics_file))

    def write_metrics(self, metrics: RunMetrics) -> Path:
        return write_json(self.metrics_file, metrics.to_dict())
