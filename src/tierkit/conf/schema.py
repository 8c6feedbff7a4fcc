"""The type, range and meaning of every key tierkit reads from conf/train.yaml.

Sections tierkit owns are dataclasses: OmegaConf's structured configs check each value's type against them.
Sections that name a class by ``_target_`` (models, data, optimizers, schedulers, the Trainer, loggers, callbacks)
take that class's constructor arguments as their schema; ``TARGET_RULES`` adds the ranges tierkit relies on.
Defaults stay in the YAML files, so every field here is required-when-present (``MISSING``).
"""

import math
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from omegaconf import MISSING

from tierkit.runtime.manifest import PRECISIONS


@dataclass(frozen=True)
class Range:
    """Bounds on a number: ``gt``/``ge`` below, ``lt``/``le`` above (None: unbounded)."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    def holds(self, value: float) -> bool:
        if isinstance(value, float) and math.isnan(value):
            return False
        return (
            (self.gt is None or value > self.gt)
            and (self.ge is None or value >= self.ge)
            and (self.lt is None or value < self.lt)
            and (self.le is None or value <= self.le)
        )

    def __str__(self) -> str:
        low = f"({self.gt:g}" if self.gt is not None else f"[{self.ge:g}" if self.ge is not None else None
        high = f"{self.lt:g})" if self.lt is not None else f"{self.le:g}]" if self.le is not None else None
        if low and high:
            return f"{low}, {high}"
        if low:
            return f"> {self.gt:g}" if self.gt is not None else f">= {self.ge:g}"
        return f"< {self.lt:g}" if self.lt is not None else f"<= {self.le:g}"

    def refusal(self) -> str:
        """How a value outside the range is described: 'must be positive', 'is outside [0, 1]', ..."""
        if self.gt == 0 and self.lt is None and self.le is None:
            return "must be positive"
        if self.ge is not None and self.lt is None and self.le is None:
            return f"must be at least {self.ge:g}"
        if self.gt is not None and self.lt is None and self.le is None:
            return f"must be above {self.gt:g}"
        return f"is outside {self}"


CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
# What mixed precision may give a sensitive layer: INT8 weights with 16-bit activations, or float.
MIXED_PRECISIONS = ("int16", "float")
GRAPH_LEVELS = ("ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL")
POSITIVE = Range(gt=0)
NOT_NEGATIVE = Range(ge=0)
AT_LEAST_ONE = Range(ge=1)
FRACTION = Range(ge=0, le=1)
SHARE = Range(gt=0, le=1)
BUDGET = Range(ge=-1, le=1)  # an accuracy drop as a fraction; below 0 nothing meets it


@dataclass(frozen=True)
class Rule:
    """What a key means, and the values it may take beyond its type."""

    help: str
    range: Range | None = None
    choices: tuple[Any, ...] | None = None
    kind: type | None = None  # for keys of _target_ sections, whose signature may not say
    nullable: bool = False  # for keys of _target_ sections: null is allowed (owned keys: their Optional type)
    nonempty: bool = False  # a list that must name at least one value


def setting(
    help: str, range: Range | None = None, choices: tuple[Any, ...] | None = None, nonempty: bool = False
) -> Any:
    """A schema field: required when present, described, and bounded."""
    return field(default=MISSING, metadata={"rule": Rule(help, range, choices, nonempty=nonempty)})


def target(help: str) -> Any:
    """A field holding a ``_target_`` config, checked against its class's signature instead of a dataclass."""
    return field(default=MISSING, metadata={"rule": Rule(help), "target": True})


@dataclass
class DistillSchema:
    temperature: float = setting("softmax temperature of the teacher's soft targets", POSITIVE)
    alpha: float = setting("weight of the soft-target loss (1 - alpha: the labels)", FRACTION)
    cache_teacher_logits: bool = setting("run the frozen teacher over the training split once, not every epoch")


@dataclass
class TeacherSchema:
    ckpt_path: str | None = setting("your trained teacher (state_dict, safetensors, Lightning or tierkit file)")
    state_dict_prefix: str | None = setting("where a Lightning checkpoint keeps the weights; null: found")
    max_epochs: int = setting("epochs of a teacher trained here", AT_LEAST_ONE)
    seed: int = setting("seed of the teacher's training", NOT_NEGATIVE)
    cache_dir: str = setting("where trained teachers are cached, shared by every run")
    optimizer: Any = target("the teacher's own optimizer (the optimizer group)")
    scheduler: Any = target("the teacher's learning-rate schedule")


@dataclass
class BudgetsSchema:
    max_drop_vs_teacher: float = setting("largest accuracy drop of the shipped model against the teacher", POSITIVE)
    max_accuracy_drop: float | None = setting("deprecated name of max_drop_vs_teacher", POSITIVE)
    max_size_kib: float = setting("largest model file, KiB", POSITIVE)
    max_latency_ms: float = setting("largest batch-1 p50 latency on budget_hardware, ms", POSITIVE)


@dataclass
class DeviceSchema:
    min_cores: int = setting("fewest CPU cores of a device this tier is for", AT_LEAST_ONE)
    min_memory_mib: int = setting("least memory of a device this tier is for, MiB", AT_LEAST_ONE)


@dataclass
class TierSchema:
    name: str = setting("the tier's name in the manifest")
    student_width: float | None = setting("width multiplier of a scratch student (width_multiplier_arg)", POSITIVE)
    size_vs_teacher: float = setting("share of the teacher a from_teacher student keeps", SHARE)
    size_measure: str = setting("what size_vs_teacher counts", choices=("params", "macs"))
    channel_multiple: int = setting("pruning keeps channel counts that are multiples of this", AT_LEAST_ONE)
    pruning_target: float = setting("share of channels and neurons pruning removes", Range(ge=0, lt=1))
    budgets: BudgetsSchema = field(default_factory=BudgetsSchema)
    precisions: list[str] = setting("precisions export may ship for the tier", choices=PRECISIONS, nonempty=True)
    budget_hardware: str = setting("hardware config (conf/hardware/) the latency budget is checked on")
    device: DeviceSchema = field(default_factory=DeviceSchema)


@dataclass
class CalibrationSchema:
    samples: int = setting("training samples static INT8 calibrates on", AT_LEAST_ONE)
    batch_size: int = setting("calibration batch size", AT_LEAST_ONE)
    method: str = setting("how activation ranges are chosen", choices=CALIBRATION_METHODS)
    seed: int = setting("seed of the calibration sample", NOT_NEGATIVE)


@dataclass
class SensitivitySchema:
    enabled: bool = setting("write quantization/sensitivity.{json,md,png}: per-layer SQNR")
    accuracy_effects: str = setting("measure each layer's accuracy effect", choices=("when_missed", "always", "never"))


@dataclass
class EscalationSchema:
    enabled: bool = setting("try calibration methods and mixed precision before QAT")
    calibration_methods: list[str] = setting("calibration methods tried", choices=CALIBRATION_METHODS)
    max_float_layers: int = setting("most sensitive layers mixed precision may keep in higher precision", NOT_NEGATIVE)
    precisions: list[str] = setting(
        "higher precisions mixed precision tries per layer, in order", choices=MIXED_PRECISIONS
    )


@dataclass
class QatStageSchema:
    enabled: bool = setting("fall back to quantization-aware training when INT8 misses the budget")
    epochs: int = setting("epochs of the QAT stage", AT_LEAST_ONE)
    optimizer: Any = target("the QAT stage's optimizer")
    scheduler: Any = target("the QAT stage's learning-rate schedule")
    callback: Any = target("when QAT quantizes weights, activations, and freezes ranges")


@dataclass
class QuantizationSchema:
    enabled: bool = setting("run the FP32 -> FP16 -> INT8 stage after training")
    max_drop_vs_fp32: float = setting(
        "largest INT8 accuracy drop against the FP32 student (validation); a negative one forces QAT", BUDGET
    )
    max_accuracy_drop: float | None = setting("deprecated name of max_drop_vs_fp32", BUDGET)
    calibration: CalibrationSchema = field(default_factory=CalibrationSchema)
    reduce_range: bool | None = setting("7-bit weights (x86 without VNNI); null: from this CPU's flags")
    per_channel: bool = setting("one weight scale per output channel")
    float_first_layer: bool = setting("post-training INT8 leaves the layer that reads the input in float")
    sensitivity: SensitivitySchema = field(default_factory=SensitivitySchema)
    escalation: EscalationSchema = field(default_factory=EscalationSchema)
    qat: QatStageSchema = field(default_factory=QatStageSchema)


@dataclass
class FinetuneSchema:
    checkpoint: str = setting("which checkpoint of from_run to adapt", choices=("best", "last"))
    epochs: int = setting("fine-tuning epochs", AT_LEAST_ONE)
    alpha: float = setting("weight of the source run's teacher on the target data (0: labels alone)", FRACTION)
    optimizer: Any = target("fine-tuning's optimizer")


@dataclass
class PathsSchema:
    root_dir: str = setting("relative paths are taken from here")
    data_dir: str = setting("where datasets are downloaded")
    output_dir: str = setting("the run folder")
    cache_dir: str = setting("teacher cache (TIERKIT_CACHE_DIR)")


@dataclass
class StudentSchema:
    init: str = setting("scratch: model.student; from_teacher: the teacher pruned", choices=("scratch", "from_teacher"))
    pruning_start_epoch: int = setting("default first pruning epoch for this kind of student", NOT_NEGATIVE)
    pruning_end_epoch: int = setting("default last pruning epoch for this kind of student", NOT_NEGATIVE)


@dataclass
class TrainSchema:
    task_name: str = setting("names the run's folder and logs")
    seed: int = setting("seed of the student's training", NOT_NEGATIVE)
    stage: str = setting("train a student, or finetune the one from_run names", choices=("train", "finetune"))
    from_run: str | None = setting("the run stage=finetune adapts")
    ckpt_path: str | None = setting("resume: null, last, or a .ckpt file")
    optimized_metric: Any = setting("metrics.json path(s) a sweeper optimizes")
    distill: DistillSchema = field(default_factory=DistillSchema)
    teacher: TeacherSchema = field(default_factory=TeacherSchema)
    tier: TierSchema = field(default_factory=TierSchema)
    quantization: QuantizationSchema = field(default_factory=QuantizationSchema)
    finetune: FinetuneSchema = field(default_factory=FinetuneSchema)
    paths: PathsSchema = field(default_factory=PathsSchema)
    student: StudentSchema = field(default_factory=StudentSchema)
    scheduler: Any = target("the student's learning-rate schedule")
    optimizer: Any = target("the student's optimizer (the optimizer group)")
    trainer: Any = target("the Lightning Trainer's arguments")
    data: Any = target("the data module (the data group)")
    model: Any = field(default=MISSING, metadata={"rule": Rule("model.teacher and model.student")})
    callbacks: Any = field(default=MISSING, metadata={"rule": Rule("Lightning callbacks, by name")})
    logger: Any = field(default=MISSING, metadata={"rule": Rule("Lightning loggers, by name")})


@dataclass
class ExportCalibrationSchema:
    samples: int | None = setting("calibration samples; null: the run's own", AT_LEAST_ONE)
    batch_size: int | None = setting("calibration batch size; null: the run's own", AT_LEAST_ONE)
    method: str | None = setting("calibration method; null: the run's own", choices=CALIBRATION_METHODS)
    seed: int | None = setting("seed of the calibration sample; null: the run's own", NOT_NEGATIVE)


@dataclass
class ProfilingSchema:
    hardware: list[str] = setting("hardware configs (conf/hardware/) every model is timed under", nonempty=True)
    graph_optimization_levels: list[str] | None = setting(
        "ONNX Runtime graph optimization levels; null: each hardware config's own", choices=GRAPH_LEVELS
    )
    warmup: int = setting("untimed runs before timing", NOT_NEGATIVE)
    repeats: int = setting("timed batch-1 runs per model", AT_LEAST_ONE)
    throughput_batch: int = setting("batch size throughput is measured at", AT_LEAST_ONE)
    throughput_repeats: int = setting("timed throughput runs per model", AT_LEAST_ONE)
    operator_runs: int = setting("runs of ONNX Runtime's per-operator profile", AT_LEAST_ONE)
    top_operators: int = setting("operator types kept from that profile", AT_LEAST_ONE)
    memory: bool = setting("measure peak memory of loading and running each model, in a fresh process")
    plot_hardware: str = setting("the hardware config whose latencies pareto.png plots")


@dataclass
class ExportWandbSchema:
    enabled: bool = setting("log the export to Weights & Biases")
    project: str = setting("W&B project")
    name: str | None = setting("W&B run name; null: export-<output folder name>")
    group: str | None = setting("W&B group; null: the exported runs' own")
    dir: str = setting("where W&B writes its files")
    offline: bool = setting("log offline (upload later with wandb sync)")


@dataclass
class ExportSchema:
    run: str = setting("run folder, sweep folder, or latest")
    checkpoint: str = setting("which checkpoint of each run", choices=("best", "last"))
    output_dir: str = setting("the export folder (must not hold an export yet)")
    max_logit_difference: float = setting("largest ONNX Runtime vs PyTorch logit difference", POSITIVE)
    precisions: list[str] = setting("precisions written", choices=PRECISIONS, nonempty=True)
    calibration: ExportCalibrationSchema = field(default_factory=ExportCalibrationSchema)
    int8_weight_bits: Any = setting("INT8 weight ranges, a file each", choices=(8, 7), nonempty=True)
    reduce_range: bool | None = setting("deprecated: true means int8_weight_bits=[7], false [8]")
    per_channel: bool | None = setting("one weight scale per output channel; null: each run's own")
    float_first_layer: bool | None = setting("post-training INT8 leaves the first layer in float; null: each run's own")
    ship_latency_tolerance: float = setting(
        "p50s within this fraction of the fastest passing variant's tie; the most accurate on validation ships",
        NOT_NEGATIVE,
    )
    profiling: ProfilingSchema = field(default_factory=ProfilingSchema)
    wandb: ExportWandbSchema = field(default_factory=ExportWandbSchema)
    paths: PathsSchema = field(default_factory=PathsSchema)


@dataclass
class HardwareSchema:
    name: str = setting("the config's name in the manifest")
    execution_providers: list[str] | None = setting("ONNX Runtime execution providers; null: all available")
    intra_op_num_threads: int = setting("threads within an operator (0: all cores)", NOT_NEGATIVE)
    inter_op_num_threads: int = setting("threads across operators", NOT_NEGATIVE)
    graph_optimization_level: str = setting("ONNX Runtime graph optimization level", choices=GRAPH_LEVELS)


# Keys of _target_ sections whose values tierkit itself relies on (glob patterns, first match wins).
EPOCH = Range(ge=0)
TARGET_RULES: dict[str, Rule] = {
    "data.batch_size": Rule("training batch size", AT_LEAST_ONE, kind=int),
    "data.eval_batch_size": Rule("validation and test batch size", AT_LEAST_ONE, kind=int),
    "data.num_workers": Rule("DataLoader worker processes", NOT_NEGATIVE, kind=int),
    "data.num_classes": Rule("classes the labels name (null: the module says)", Range(ge=2), kind=int, nullable=True),
    "data.val_size": Rule("validation samples held out of training", NOT_NEGATIVE),
    "data.test_size": Rule("test samples held out", NOT_NEGATIVE),
    "trainer.max_epochs": Rule("epochs of the student's fit", AT_LEAST_ONE, kind=int),
    "trainer.min_epochs": Rule("epochs before early stopping may end the fit", NOT_NEGATIVE, kind=int),
    "callbacks.pruning.target": Rule("share of channels removed", Range(gt=0, lt=1)),
    "callbacks.pruning.start_epoch": Rule("epoch of the first pruning step", EPOCH, kind=int),
    "callbacks.pruning.end_epoch": Rule("epoch of the last pruning step", EPOCH, kind=int),
    "callbacks.pruning.steps": Rule("pruning steps", AT_LEAST_ONE, kind=int),
    "callbacks.pruning.schedule": Rule("how the share grows", choices=("oneshot", "linear", "cubic")),
    "callbacks.pruning.importance": Rule("channel importance", choices=("l1", "l2", "bn_scale", "taylor")),
    "callbacks.pruning.round_to": Rule(
        "kept channel counts are multiples of this (null: any count)", AT_LEAST_ONE, kind=int, nullable=True
    ),
    "callbacks.pruning.mode": Rule("fixed: every step; budget: accuracy-aware", choices=("fixed", "budget")),
    "callbacks.pruning.max_drop": Rule("budget mode's accuracy budget against the teacher", POSITIVE, nullable=True),
    "callbacks.pruning.margin": Rule("budget mode stops this far inside the budget", NOT_NEGATIVE),
    "callbacks.pruning.patience": Rule("epochs budget mode waits for recovery", NOT_NEGATIVE, kind=int),
    "callbacks.pruning.retries": Rule("extra steps budget mode bisects with after a rollback", NOT_NEGATIVE, kind=int),
    "*qat*.start_epoch": Rule("epoch weights start being quantized", EPOCH, kind=int),
    "*qat*.activations_epoch": Rule("epoch activations start being quantized", EPOCH, kind=int),
    "*qat*.freeze_epoch": Rule("epoch activation ranges and batch-norm statistics freeze", EPOCH, kind=int),
    "*qat*.observer_momentum": Rule("momentum of the activation range observers", Range(gt=0, le=1)),
    "*optimizer.lr": Rule("learning rate (0 freezes the weights)", NOT_NEGATIVE),
    "*optimizer.weight_decay": Rule("weight decay", NOT_NEGATIVE),
    "*optimizer.momentum": Rule("momentum", Range(ge=0, lt=1)),
    "model.*.width": Rule("the zoo's width multiplier", POSITIVE),
}

# Keys of model configs that tierkit reads itself, never passed to the constructor.
MODEL_OWN_KEYS = {
    "width_multiplier_arg": "the constructor argument the tier's student_width scales",
    "input_shape_arg": "the constructor argument that takes the input shape",
    "in_channels_arg": "the constructor argument that takes the input channels",
    "num_classes_arg": "the constructor argument that takes the number of classes",
}


def target_rule(path: str) -> Rule | None:
    """The rule for a key of a ``_target_`` section, if tierkit relies on its value."""
    return next((rule for pattern, rule in TARGET_RULES.items() if fnmatchcase(path, pattern)), None)
