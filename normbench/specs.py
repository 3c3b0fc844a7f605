"""The configs' schemas and the jobs' specs.

Schemas: dataclasses registered in Hydra's ConfigStore as `speed_schema` and `accuracy_schema`, the
first entry of conf/speed.yaml's and conf/accuracy.yaml's defaults lists. Hydra then refuses a value
of the wrong type, a choice outside an enum and an unknown key itself, naming the key
(docs: https://hydra.cc/docs/tutorials/structured_config/schema/). The nodes that are plug-ins (norm,
model, dataset, shape.model: `_target_`s and their arguments) stay open dicts.

Specs: frozen dataclasses a job is given, built once from its composed config (`speed_job`,
`train_job`); the layers below take those plain values, never the Hydra config. What a schema cannot
say (a value's range, one key against another) is checked here, one line naming the key and the fix.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from normbench.errors import UsageError

# ------------------------------------------------------------------------------------- choices


class Choice(str, Enum):
    """A key's allowed values; a member is its string (compares, hashes, prints and serializes as it),
    so code that reads a composed config sees "cold", not a new type."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class Dtype(Choice):
    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"


class Layout(Choice):
    contiguous = "contiguous"
    channels_last = "channels_last"


class L2(Choice):
    cold = "cold"  # the device clocks rotate over copies holding > 3x the L2; the wall clock flushes it
    warm = "warm"  # one resident copy, no flush


class DeviceClock(Choice):
    graph = "graph"  # CUDA-graph replay
    kineto = "kineto"  # torch.profiler's kernel times


class Precision(Choice):
    fp32 = "fp32"
    bf16 = "bf16"


class WeightDecayOn(Choice):
    all = "all"
    weights = "weights"


# ------------------------------------------------------------------------------------- schemas
# Field defaults are the YAML's; the YAML files stay where each key is documented.


@dataclass
class Common:
    """conf/common.yaml's keys (its `hydra:` node is Hydra's own schema)."""

    device: str = "auto"
    seed: int = 0
    plugins: list[str] = field(default_factory=list)  # modules imported before the registry is read


@dataclass
class SpeedSettings:
    """speed.*: conf/speed.yaml, and the shape group (conf/shape/*) for the three shape keys."""

    batch_size: int = 8
    channels: int | None = 64
    spatial: list[int] | None = field(default_factory=lambda: [28, 28])
    threads: int | None = 1
    min_run_time: float = 0.2
    min_repeats: int = 10
    warmup_ms: float = 25.0
    rep_ms: float = 100.0
    clocks: Any = "all"  # all, or a list of clock names (normbench.bench.clocks.parse_clocks)
    device_clock: DeviceClock = DeviceClock.graph
    l2: L2 = L2.cold
    cuda_graph: bool = False
    peak_gbps: float | None = None
    peak_copy_mb: int = 512


@dataclass
class TritonSettings:
    """triton.*: impl=triton's kernel settings (normbench.kernels.settings)."""

    cooperative: bool = False


@dataclass
class ModelShape:
    """shape.*, set by shape=model: the model whose norm layers' inputs are timed."""

    model: Any = None  # a `_target_` node
    input: list[int] | None = None


class SpeedConfig(Common):
    impl: str = "native"
    norm: Any = None  # conf/norm/<name>.yaml: name and options (its own schema lives with the norms)
    dtype: Dtype = Dtype.float32
    layout: Layout = Layout.contiguous
    speed: SpeedSettings = field(default_factory=SpeedSettings)
    triton: TritonSettings = field(default_factory=TritonSettings)
    shape: ModelShape | None = None


# `pass` is a key users type (pass=fwd) and a Python keyword: no __init__, __repr__ or __eq__ can
# name it, so the field is set after construction (OmegaConf.to_object sets non-init fields so).
SpeedConfig.__annotations__["pass"] = Any
setattr(SpeedConfig, "pass", field(default="all", init=False))
SpeedConfig = dataclass(SpeedConfig, repr=False, eq=False)


@dataclass
class LrReference:
    lr: float = 0.1
    batch: int = 64


@dataclass
class AccuracySettings:
    """accuracy.*: conf/accuracy.yaml documents each key."""

    batch_size: int = 16
    global_batch: int | None = 64
    workers: int | None = None
    epochs: int = 5
    lr_reference: LrReference = field(default_factory=LrReference)
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5.0e-4
    weight_decay_on: WeightDecayOn = WeightDecayOn.all
    label_smoothing: float = 0.0
    warmup_epochs: float = 0.0
    grad_clip: float | None = None
    eval_batch: int = 1000
    precise_bn_samples: int | None = 2048
    train_eval_samples: int | None = 1024
    # {grid, validation, seed, seeds} or null; open (OmegaConf cannot merge a dict into a null typed
    # node), checked by `lr_search` below
    lr_search: Any = None
    reuse: bool = True
    fast_path: bool = False
    precision: Precision = Precision.fp32
    channels_last: bool = True
    compile: bool = False
    deterministic: bool = False
    cpu_threads: int | None = 1
    progress: bool = True


@dataclass
class AccuracyConfig(Common):
    impl: str = "native"
    norm: Any = None
    norm_options: dict[str, Any] = field(default_factory=dict)
    dataset: Any = None  # a `_target_` node (conf/dataset)
    model: Any = None  # a `_target_` node (conf/model)
    accuracy: AccuracySettings = field(default_factory=AccuracySettings)
    plan: dict[str, Any] | None = None  # an experiment's planning rates (normbench.app.plan)


def register() -> None:
    """Store the schemas under the names the primary configs' defaults lists give (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="speed_schema", node=SpeedConfig)
    cs.store(name="accuracy_schema", node=AccuracyConfig)


register()


def typed(schema, cfg: DictConfig):
    """The job's keys of `cfg` (not Hydra's own node) as an instance of `schema`, validated by it."""
    keys = [k for k in cfg if k != "hydra"]
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.masked_copy(cfg, keys)))


def plain(value):
    """An enum's value, anything else as it is."""
    return value.value if isinstance(value, Enum) else value


def one_line(exc: BaseException) -> str:
    """Hydra's composition error (an override or a YAML value the schema refuses, an unknown group
    option) as one line: what Hydra says, its lists inline, and what the OmegaConf error under it says,
    with the key it names."""
    parts = [_inline(str(exc))]
    if getattr(exc, "override", None):  # OverrideParseException: which override did not parse
        parts.insert(0, str(exc.override))
    cause = exc.__cause__
    if cause is not None and str(cause):
        text = str(cause).splitlines()
        key = next((t.strip().removeprefix("full_key: ") for t in text if t.strip().startswith("full_key:")), "")
        parts.append(text[0] + (f" (key {key})" if key and key not in text[0] else ""))
    return ": ".join(p.rstrip(".") for p in parts if p) or type(exc).__name__


def _inline(text: str) -> str:
    """Hydra's lines as one: "Available options in 'norm':" and its list -> "...: bn, gn". Dropped:
    the config search path, and the hint to append a key the schema does not know (it cannot be)."""
    out, listing = "", False
    for line in (t.strip() for t in text.splitlines()):
        if line.startswith("Config search path"):
            break
        if not line or line.startswith("To append to your config use"):
            continue
        sep = ("" if out.endswith(":") else ",") if listing else ";"
        out = f"{out}{sep} {line}" if out else line
        listing = listing or line.endswith(":")
    return out


# ------------------------------------------------------------------------------------- checks


def positive(value, key: str, hint: str, *, most: float | None = None):
    """`value` (typed by the schema; None passes) unless it is <= 0, not finite, or over `most`."""
    if value is None:
        return None
    if not (value > 0 and math.isfinite(value)) or (most is not None and value > most):
        limit = f" and at most {most:g}" if most is not None else ""
        raise UsageError(f"{key} must be > 0{limit}, got {value!r}: {hint}")
    return value


# ------------------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class PassTiming:
    """How each pass is timed (speed.*): the wall clock's options and the device clocks'."""

    min_run_time: float
    min_repeats: int
    warmup_ms: float
    rep_ms: float
    clocks: tuple[str, ...]
    device_clock: str
    l2: str
    cuda_graph: bool

    def wall_options(self) -> dict:
        """The wall clock's options; l2=warm leaves the L2 unflushed between its repeats."""
        keep = {k: getattr(self, k) for k in ("min_run_time", "min_repeats", "warmup_ms", "rep_ms")}
        return {**keep, "flush": self.l2 != "warm"}


@dataclass(frozen=True)
class SpeedJob:
    """One speed job: a norm x implementation at one shape (or at a model's shapes), timed per pass."""

    norm: str
    norm_options: dict  # the norm node less its name: groups, eps, ...
    impl: str
    dtype: str
    layout: str
    passes: tuple[str, ...]
    batch_size: int  # N, the input's first dimension
    channels: int | None
    spatial: tuple[int, ...]
    model: dict | None  # shape.model's `_target_` node where the shapes come from a model
    model_input: tuple[int, ...] | None  # one sample's (C, *spatial) for the model
    seed: int
    device: str
    threads: int | None
    peak_gbps: float | None
    peak_copy_mb: int
    timing: PassTiming
    triton_cooperative: bool = False  # impl=triton: the cooperative kernels where their plan fits

    @property
    def norm_node(self) -> dict:
        return {"name": self.norm, **self.norm_options}

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.batch_size, self.channels, *self.spatial)


def speed_job(cfg: DictConfig, passes: tuple[str, ...], clocks: tuple[str, ...]) -> SpeedJob:
    """The spec of a composed speed config (`passes` and `clocks` parsed by the speed job), its values'
    ranges checked."""
    obj = typed(SpeedConfig, cfg)
    sp = obj.speed
    norm = OmegaConf.to_container(cfg.norm, resolve=True)
    shape = obj.shape if obj.shape is not None and obj.shape.model is not None else None
    positive(sp.batch_size, "speed.batch_size", "e.g. speed.batch_size=8")
    positive(sp.min_run_time, "speed.min_run_time", "seconds of timed calls per pass, e.g. 0.2", most=3600)
    positive(sp.min_repeats, "speed.min_repeats", "e.g. 10")
    positive(sp.warmup_ms, "speed.warmup_ms", "e.g. 25")
    positive(sp.rep_ms, "speed.rep_ms", "e.g. 100")
    positive(sp.peak_gbps, "speed.peak_gbps", "the roofline in GB/s, e.g. 3350, or null to measure it")
    positive(sp.peak_copy_mb, "speed.peak_copy_mb", "MiB per copy buffer, e.g. 512")
    return SpeedJob(
        norm=norm["name"],
        norm_options={k: v for k, v in norm.items() if k != "name"},
        impl=obj.impl,
        dtype=plain(obj.dtype),
        layout=plain(obj.layout),
        passes=tuple(passes),
        batch_size=sp.batch_size,
        channels=sp.channels,
        spatial=tuple(sp.spatial or ()),
        model=OmegaConf.to_container(cfg.shape.model, resolve=False) if shape else None,
        model_input=tuple(shape.input or ()) if shape else None,
        seed=obj.seed,
        device=obj.device,
        threads=sp.threads,
        peak_gbps=None if sp.peak_gbps is None else float(sp.peak_gbps),
        peak_copy_mb=sp.peak_copy_mb,
        timing=PassTiming(
            min_run_time=float(sp.min_run_time),
            min_repeats=sp.min_repeats,
            warmup_ms=float(sp.warmup_ms),
            rep_ms=float(sp.rep_ms),
            clocks=tuple(clocks),
            device_clock=plain(sp.device_clock),
            l2=plain(sp.l2),
            cuda_graph=sp.cuda_graph,
        ),
        triton_cooperative=obj.triton.cooperative,
    )


def replace(spec, **changes):
    """A copy of a frozen spec with `changes` (dataclasses.replace)."""
    return dataclasses.replace(spec, **changes)


# ------------------------------------------------------------------------------------- the accuracy job


@dataclass(frozen=True)
class Split:
    """How one optimizer step's samples are split: K (`norm_batch`) per normalization batch, W workers,
    K x W in all."""

    norm_batch: int
    workers: int
    global_batch: int
    protocol: str  # which one is fixed across a sweep over K: "global_batch" or "workers"


@dataclass(frozen=True)
class Schedule:
    """The optimizer and its LR schedule (accuracy.*): SGD, linear warmup, cosine decay."""

    epochs: int
    reference_lr: float  # the LR per `reference_batch` samples (accuracy.lr_reference)
    reference_batch: int
    momentum: float
    nesterov: bool
    weight_decay: float
    weight_decay_on: str  # all, or weights (convolutions' and linear layers')
    label_smoothing: float
    warmup_epochs: float
    grad_clip: float | None


@dataclass(frozen=True)
class FastPath:
    """How the fast loop trains (normbench.train.fastpath); the default is the standard loop."""

    enabled: bool = False
    precision: str = "fp32"
    channels_last: bool = True
    compile: bool = False

    def describe(self) -> str:
        """The `train_loop` column: `standard`, or `fast` and the options that are on."""
        if not self.enabled:
            return "standard"
        on = [self.precision] + [name for name in ("channels_last", "compile") if getattr(self, name)]
        return " ".join(["fast", *on])


@dataclass(frozen=True)
class LrSearch:
    """accuracy.lr_search: the grid (per reference batch, ascending), the held-out fraction, the seeds."""

    grid: tuple[float, ...]
    validation: float
    seeds: tuple[int, ...]


@dataclass(frozen=True)
class TrainJob:
    """One accuracy job: a model trained with one norm at one normalization batch K, and evaluated."""

    norm: str
    norm_node: dict  # the norm node: name, groups, eps, ...
    norm_extra: dict  # norm_options.<norm>: the sweep's options for this norm
    impl: str
    dataset: dict  # `_target_` nodes (plug-ins)
    model: dict
    seed: int
    device: str
    split: Split
    schedule: Schedule
    loop: FastPath
    eval_batch: int
    precise_bn_samples: int | None
    train_eval_samples: int | None
    lr_search: LrSearch | None
    reuse: bool
    deterministic: bool
    cpu_threads: int | None
    progress: bool

    @property
    def norm_batch(self) -> int:
        return self.split.norm_batch


def _container(node) -> dict:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})


def train_job(cfg: DictConfig) -> TrainJob:
    """The spec of a composed accuracy config, its values' ranges and cross-field rules checked."""
    obj = typed(AccuracyConfig, cfg)
    acc = obj.accuracy
    norm = _container(cfg.norm)
    extra = _container((cfg.get("norm_options") or {}).get(norm["name"]))
    if "groups" in extra:
        raise UsageError(
            f"norm_options.{norm['name']}.groups: a norm's groups have one key, norm.groups (a model's default is its "
            f"config's norm_groups): set norm.groups={extra['groups']} instead"
        )
    return TrainJob(
        norm=norm["name"],
        norm_node=norm,
        norm_extra=extra,
        impl=obj.impl,
        dataset=_container(cfg.dataset),
        model=_container(cfg.model),
        seed=obj.seed,
        device=obj.device,
        split=step_split(acc.batch_size, acc.global_batch, acc.workers),
        schedule=schedule(acc),
        loop=fast_path(acc),
        eval_batch=positive(acc.eval_batch, "accuracy.eval_batch", "the test batch in eval mode, e.g. 1000"),
        precise_bn_samples=positive(
            acc.precise_bn_samples,
            "accuracy.precise_bn_samples",
            "the training samples PreciseBN averages over, e.g. 2048",
        ),
        train_eval_samples=positive(
            acc.train_eval_samples, "accuracy.train_eval_samples", "the training samples scored in eval mode, e.g. 1024"
        ),
        lr_search=None if acc.lr_search is None else lr_search(acc.lr_search),
        reuse=acc.reuse,
        deterministic=acc.deterministic,
        cpu_threads=positive(acc.cpu_threads, "accuracy.cpu_threads", "or null for torch's default"),
        progress=acc.progress,
    )


def step_split(norm_batch: int, global_batch: int | None, workers: int | None) -> Split:
    """K, W and the global batch from `accuracy.batch_size` and either `accuracy.global_batch` (the
    default protocol: W = global_batch / K) or `accuracy.workers` (the GN paper's: global = K x W)."""
    k = positive(norm_batch, "accuracy.batch_size", "the samples per normalization batch, e.g. accuracy.batch_size=16")
    if global_batch is not None and workers is not None:
        raise UsageError(
            f"accuracy.global_batch={global_batch} and accuracy.workers={workers} both fix the samples per step: "
            f"keep one (accuracy.workers=null for a fixed global batch, W = global_batch / K; "
            f"accuracy.global_batch=null for fixed workers, the GN paper's protocol)"
        )
    if global_batch is None and workers is None:
        raise UsageError(
            "set accuracy.global_batch (samples per step, e.g. 64) or accuracy.workers "
            "(fixed workers, e.g. 8): both are null"
        )
    if workers is not None:
        workers = positive(workers, "accuracy.workers", "the simulated data-parallel workers, e.g. accuracy.workers=8")
        return Split(k, workers, k * workers, "workers")
    global_batch = positive(global_batch, "accuracy.global_batch", "the samples per optimizer step, e.g. 64")
    if global_batch % k:
        divisors = [d for d in range(1, global_batch + 1) if global_batch % d == 0]
        raise UsageError(
            f"accuracy.global_batch={global_batch} does not split into normalization batches of "
            f"accuracy.batch_size={k}: choose K from the divisors of {global_batch}: "
            f"{', '.join(map(str, divisors))} (or change accuracy.global_batch)"
        )
    return Split(k, global_batch // k, global_batch, "global_batch")


def _within(value, key: str, rule: str, ok, hint: str) -> float:
    """`value` (a number: the schema typed it) as a float if it is finite with `ok(value)`."""
    if not math.isfinite(value) or not ok(value):
        raise UsageError(f"{key} must be a finite number {rule}, got {value!r}: {hint}")
    return float(value)


def schedule(acc: AccuracySettings) -> Schedule:
    ref = acc.lr_reference
    momentum = _within(acc.momentum, "accuracy.momentum", "in [0, 1)", lambda v: 0 <= v < 1, "SGD's momentum, e.g. 0.9")
    if acc.nesterov and momentum <= 0:
        raise UsageError(f"accuracy.nesterov=true needs accuracy.momentum > 0, got {momentum}")
    return Schedule(
        epochs=positive(acc.epochs, "accuracy.epochs", "e.g. accuracy.epochs=10"),
        reference_lr=_within(
            ref.lr,
            "accuracy.lr_reference.lr",
            "> 0",
            lambda v: v > 0,
            "the LR per lr_reference.batch samples, e.g. 0.1",
        ),
        reference_batch=positive(
            ref.batch, "accuracy.lr_reference.batch", "the samples per step lr_reference.lr is for, e.g. 64"
        ),
        momentum=momentum,
        nesterov=acc.nesterov,
        weight_decay=_within(
            acc.weight_decay, "accuracy.weight_decay", ">= 0", lambda v: v >= 0, "e.g. 5e-4, or 0 for none"
        ),
        weight_decay_on=plain(acc.weight_decay_on),
        label_smoothing=_within(
            acc.label_smoothing, "accuracy.label_smoothing", "in [0, 1)", lambda v: 0 <= v < 1, "e.g. 0.1"
        ),  # Szegedy et al. 2016, Sec. 7
        warmup_epochs=_within(
            acc.warmup_epochs, "accuracy.warmup_epochs", ">= 0", lambda v: v >= 0, "e.g. 1, or 0 for none"
        ),
        grad_clip=None if acc.grad_clip is None else float(acc.grad_clip),
    )


def fast_path(acc: AccuracySettings) -> FastPath:
    precision = plain(acc.precision)
    if not acc.fast_path and (precision != "fp32" or acc.compile):
        raise UsageError(
            f"accuracy.precision={precision} and accuracy.compile={acc.compile} take effect in the fast loop "
            "only: add accuracy.fast_path=true (or keep precision=fp32 and compile=false)"
        )
    return FastPath(acc.fast_path, precision, acc.channels_last, acc.compile)


def lr_search(node) -> LrSearch:
    """accuracy.lr_search's {grid, validation, seed, seeds}, checked (the node is open: see the schema)."""
    node = _container(node)
    grid = list(node.get("grid") or [])
    bad = [v for v in grid if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0]
    if bad or len(grid) < 2:
        raise UsageError(
            f"accuracy.lr_search.grid must hold at least two positive LRs, got {grid}: "
            "e.g. accuracy.lr_search.grid=[0.025,0.05,0.1,0.2,0.4] (or accuracy.lr_search=null for a fixed LR)"
        )
    fraction = node.get("validation", 0.2)
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction < 1:
        raise UsageError(
            f"accuracy.lr_search.validation must be a fraction of the training split in (0, 1), got {fraction!r}: "
            "e.g. 0.2"
        )
    count, first = node.get("seeds", 1), node.get("seed", 0)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise UsageError(f"accuracy.lr_search.seeds must be a positive int, got {count!r}: e.g. 3")
    return LrSearch(
        tuple(sorted(float(v) for v in grid)), float(fraction), tuple(range(int(first), int(first) + count))
    )
