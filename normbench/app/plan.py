"""What an accuracy sweep will run, and an estimate of its wall time, without running it (no GPU needed):

    python -m normbench.app.plan +experiment=cifar10_resnet20_gpu
    python -m normbench.app.plan +experiment=cifar10_resnet20_cpu_rev3 seed=0,1

It expands the sweep (the experiment's `hydra.sweeper.params`, then comma lists on the command line),
counts the trainings as the sweep makes them (a norm that cannot see K trains once per seed:
normbench.train.reuse), their steps and images, and prices each (norm, K) by what it counts here on the CPU
(the operators one training step dispatches and its FLOPs, by running the model on a few samples) and the `plan` node's
rates, which the experiment states with their basis (docs/accuracy.md, "Planning a sweep"):

    step_s = max(ops x host_us_per_op, ops x gpu_us_per_op + flops / device_flops)   # one process
    a sweep of `jobs` processes side by side: steps/s = min(jobs / step_s, 1 / device_s)
    plus start-up, and set-up per training and per job, shared by the processes

The rates are assumptions until a run measures them (its rows' samples_per_s): the plan says so.
"""

from __future__ import annotations

import itertools
import sys
from collections import Counter
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
import yaml
from omegaconf import DictConfig, OmegaConf
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from normbench import data as datasets
from normbench import models, norms, plugins, specs
from normbench.errors import UsageError
from normbench.train import accuracy, fastpath

# Where an experiment names no rates: a 2-core CPU VM, one process per core. Rough, calibrated so that
# the default sweep's estimate (~2 min) is near its measured 2 min 24 s (docs/accuracy.md, "Run times").
CPU_PLAN = {
    "device": "a 2-core CPU",
    "basis": "the default rates (the experiment has no `plan` node), calibrated on the default sweep's "
    "measured wall time on a 2-core VM: rough",
    "host_us_per_op": 20.0,
    "gpu_us_per_op": 0.0,
    "device_flops": 3.0e10,
    "shared_device": False,
    "jobs": 2,
    "startup_s": 20.0,
    "setup_s": 1.0,
    "job_s": 2.0,
    "budget_s": None,
}


class _CountOps(TorchDispatchMode):
    """Counts the aten operators dispatched: on a GPU, about one kernel launch each (views excepted)."""

    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


@dataclass(frozen=True)
class StepCost:
    ops: int  # aten operators of one training step (forward, backward, SGD with foreach)
    flops: float  # of that step (convolutions and matmuls, FlopCounterMode's count)


def step_cost(cfg: DictConfig, input_shape: tuple[int, ...], num_classes: int, global_batch: int) -> StepCost:
    """Count one training step of cfg's model and norm on the CPU, as the fast loop runs it where it
    is on (autocast's casts included), at 2 workers' samples (one where K is the whole step): the
    operators do not depend on the number of workers beyond that, and the FLOPs of convolutions and
    matmuls are linear in the batch, so they are scaled to the global batch."""
    job = specs.train_job(cfg)
    batch = job.norm_batch if job.split.workers == 1 else 2 * job.norm_batch
    make_norm, _ = accuracy.norm_factory(job)
    torch.manual_seed(0)
    model = models.from_config(job.model, input_shape=input_shape, num_classes=num_classes, norm=make_norm)
    opts = fastpath.for_data(job.loop, images=len(input_shape) == 3)
    forward = fastpath.prepare(model, replace(opts, compile=False), 1 + len(input_shape))[0] if opts.enabled else model
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, foreach=True)
    x, y = torch.randn(batch, *input_shape), torch.randint(num_classes, (batch,))

    def step():
        with fastpath.autocast(opts, torch.device("cpu")):
            loss = F.cross_entropy(forward(x), y)
        sgd.zero_grad(set_to_none=True)
        loss.backward()
        sgd.step()

    step()  # the optimizer's state is made on the first step
    counter, flops = _CountOps(), FlopCounterMode(display=False)
    with counter, flops:
        step()
    return StepCost(counter.ops, flops.get_total_flops() * global_batch / batch)


def sweep_params(hydra_params: dict, cli: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """The swept keys and their values and the plain overrides: the command line wins over the
    experiment's `hydra.sweeper.params` for a key both set, as in Hydra's sweep (`norm=bn` sweeps no norms)."""
    params = {str(k): [v.strip() for v in str(v).split(",")] for k, v in (hydra_params or {}).items()}
    plain = []
    for item in cli:
        key, _, value = item.partition("=")
        key = key.lstrip("+")
        if _is_sweep(item):
            params[key] = value.split(",")
        else:
            params.pop(key, None)
            plain.append(item)
    return params, plain


def dataset_sizes(node: DictConfig) -> tuple[int, int, tuple[int, ...], int]:
    """Train and test samples, input shape and classes; CIFAR-10 from its config (no decoding)."""
    if str(node.get("_target_", "")).endswith("data.cifar10"):
        per_class = lambda key, full: node.get(key) or full  # noqa: E731
        return 10 * per_class("train_per_class", 5000), 10 * per_class("test_per_class", 1000), (3, 32, 32), 10
    d = datasets.load(node)
    return d.x_train.shape[0], d.x_test.shape[0], tuple(d.x_train.shape[1:]), d.num_classes


class _Composer:
    """Hydra's compose API over the app's configs, initialized once for every compose of a plan."""

    def __enter__(self):
        from normbench.app.cli import configs_for_compose

        self._init = configs_for_compose()
        self._init.__enter__()
        return self

    def __exit__(self, *exc):
        return self._init.__exit__(*exc)

    def __call__(self, overrides: list[str]) -> DictConfig:
        from hydra import compose

        return compose(config_name="accuracy", overrides=overrides, return_hydra_config=True)


def _is_sweep(override: str) -> bool:
    value = override.partition("=")[2]
    return "," in value and not value.startswith("[")


@dataclass(frozen=True)
class Group:
    """The trainings of one (norm, K) in a sweep; K is None where the norm cannot see it."""

    norm: str
    k: int | None
    trainings: int
    global_batch: int
    steps: int  # optimizer steps per training
    eval_steps: float  # evaluation, as training steps of the same cost (forward only: a third)
    cost: StepCost


def groups(cli: list[str]) -> tuple[list[Group], DictConfig, int]:
    """The sweep's trainings by (norm, K), its base config (dataset, `plan` rates) and its job count."""
    with _Composer() as compose:
        base = compose([o for o in cli if not _is_sweep(o)])
        plugins.load(base.get("plugins"))  # a plug-in norm's class says whether it trains once per K
        params, plain = sweep_params(OmegaConf.to_container(base.hydra.sweeper.params), cli)
        by_norm = {}  # a norm is a config group: compose once per norm; K and seed are plain keys
        for norm in params.get("norm", [base.norm.name]):
            by_norm[norm] = base if norm == base.norm.name else compose([*plain, f"norm={norm}"])
    n_train, n_test, shape, classes = dataset_sizes(base.dataset)
    keys = [k for k in params if k not in ("norm", "seed")]
    trained: Counter = Counter()
    jobs = 0
    for values in itertools.product(*(params[k] for k in keys)):
        for composed in by_norm.values():
            cfg = composed.copy()
            for key, value in zip(keys, values):
                OmegaConf.update(cfg, key, yaml_value(value), merge=False)
            split = specs.train_job(cfg).split
            k_free = split.protocol == "global_batch" and norms.batch_independent(cfg.norm.name)
            seeds = params.get("seed", [cfg.seed])
            jobs += len(seeds)
            key = (cfg.norm.name, None if k_free else split.norm_batch, split.global_batch)
            if key not in trained:
                trained[key] = (cfg, set())
            trained[key][1].update(seeds)
    out = []
    for (norm, k, global_batch), (cfg, seeds) in trained.items():
        epochs = int(cfg.accuracy.epochs)
        steps = epochs * (n_train // global_batch)
        eval_steps = (epochs + 2) * n_test / global_batch / 3  # each epoch's test pass; bn: batch stats, PreciseBN
        cost = step_cost(cfg, shape, classes, global_batch)
        out.append(Group(norm, k, len(seeds), global_batch, steps, eval_steps, cost))
    return sorted(out, key=lambda g: (g.norm, g.k or 0)), base, jobs


def yaml_value(text: str):
    """A swept value as Hydra would read it (an int, a float, a string)."""
    return yaml.safe_load(text)


def plan(cli: list[str]) -> list[str]:
    """The plan's lines for the accuracy app's overrides `cli`."""
    found, base, jobs = groups(cli)
    rates = {**CPU_PLAN, **(OmegaConf.to_container(base.plan, resolve=True) if base.get("plan") else {})}
    n_train = dataset_sizes(base.dataset)[0]
    trainings = sum(g.trainings for g in found)
    lines = [f"plan for normbench-accuracy -m {' '.join(cli)}", f"jobs {jobs}, trainings {trainings}"]
    lines.append(f"{'norm':>10} {'K':>3} {'trainings':>9} {'steps':>7} {'ops/step':>8} {'GFLOP/step':>10} {'s/run':>7}")
    host_total = device_total = steps_total = images = 0.0
    for g in found:
        host_s = g.cost.ops * rates["host_us_per_op"] * 1e-6
        device_s = g.cost.ops * rates["gpu_us_per_op"] * 1e-6 + g.cost.flops / rates["device_flops"]
        run = g.steps + g.eval_steps
        host_total += g.trainings * run * host_s
        device_total += g.trainings * run * device_s
        steps_total += g.trainings * run
        images += g.trainings * g.steps * g.global_batch
        row = f"{g.norm:>10} {g.k or '-':>3} {g.trainings:>9} {g.steps:>7} {g.cost.ops:>8} {g.cost.flops / 1e9:>10.2f}"
        lines.append(f"{row} {run * max(host_s, device_s):>7.1f}")
    jobs_at_once = int(rates["jobs"])
    # start-up once; per training its set-up; per job Hydra's launch and the rows it writes
    setup = (trainings * rates["setup_s"] + jobs * rates["job_s"]) / jobs_at_once + rates["startup_s"]
    if rates["shared_device"]:  # processes overlap their host work; the GPU runs one kernel at a time
        wall = max(host_total / jobs_at_once, device_total) + setup
    else:  # a core per process: host and compute are both the process's own
        wall = (host_total + device_total) / jobs_at_once + setup
    budget = rates.get("budget_s")
    verdict = f", budget {budget:.0f} s: {'fits' if wall <= budget else 'DOES NOT FIT'}" if budget else ""
    epochs = int(base.accuracy.epochs)
    return [
        *lines,
        f"{trainings} trainings x {epochs} epochs of {n_train} images: {images / 1e6:.1f} M images, "
        f"{steps_total:.0f} steps (evaluation included), {jobs_at_once} processes side by side",
        f"estimated wall time {wall:.0f} s ({wall / 60:.1f} min) on {rates['device']}{verdict}",
        f"basis: {rates['basis']}",
        "an ESTIMATE from assumed rates, not a measurement: a run's rows (samples_per_s, wall_s) measure it",
    ]


def main(argv: list[str] | None = None) -> int:
    from hydra.errors import HydraException

    try:
        print("\n".join(plan(list(sys.argv[1:] if argv is None else argv))))
    except (UsageError, HydraException) as exc:  # a bad override: Hydra's message, on one line
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
