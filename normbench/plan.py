"""What an accuracy sweep will run, and an estimate of its wall time, without running it (no GPU needed):

    python -m normbench.plan +experiment=cifar10_resnet20_gpu
    python -m normbench.plan +experiment=cifar10_resnet20_cpu_rev3 seed=0,1

It expands the sweep (the experiment's `hydra.sweeper.params`, then comma lists on the command line),
counts the trainings as the sweep makes them (a norm that cannot see K trains once per seed:
normbench.reuse), their steps and images, and prices each (norm, K) by what it counts here on the CPU
(the operators one training step dispatches and its FLOPs, from the model itself) and the `plan` node's
rates, which the experiment states with their basis (docs/accuracy.md, "Planning a sweep"):

    step_s = max(ops x host_us_per_op, ops x gpu_us_per_op + flops / device_flops)   # one process
    a sweep of `jobs` processes side by side: steps/s = min(jobs / step_s, 1 / device_s)

The rates are assumptions until a run measures them (its rows' samples_per_s): the plan says so.
"""

from __future__ import annotations

import itertools
import math
import sys
from collections import Counter
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from normbench import accuracy, fastpath, models, norms
from normbench import data as datasets
from normbench.errors import UsageError

# Where an experiment names no rates: this 2-core CPU VM, one process per core, the standard loop
# (tests/benchmarks/test_bench_train.py measured ResNet-20 at ~130 images/s per core under load).
CPU_PLAN = {
    "device": "a 2-core CPU",
    "basis": "the default rates (the experiment has no `plan` node): those of a 2-core CPU VM, one process per core",
    "host_us_per_op": 10.0,
    "gpu_us_per_op": 0.0,
    "device_flops": 3.0e10,
    "shared_device": False,
    "jobs": 2,
    "startup_s": 10.0,
    "setup_s": 1.0,
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
    """Count one training step of cfg's model and norm, as the fast loop would run it where it is on:
    on meta tensors at the real global batch (shapes without data: nothing computed), or, for a norm
    that reads a value on the host (brn's step count), on the CPU at one normalization batch per
    worker for 2 workers, its FLOPs scaled to the global batch (convolutions and matmuls are linear in it)."""
    split = accuracy.step_split(cfg.accuracy)
    try:
        return _count_step(cfg, input_shape, num_classes, global_batch, "meta")
    except RuntimeError:
        batch = min(global_batch, 2 * split.k)
        cost = _count_step(cfg, input_shape, num_classes, batch, "cpu")
        return StepCost(cost.ops, cost.flops * global_batch / batch)


def _count_step(cfg: DictConfig, input_shape, num_classes: int, batch: int, device: str) -> StepCost:
    split = accuracy.step_split(cfg.accuracy)
    make_norm, _ = accuracy.norm_factory(cfg, split.k)
    torch.manual_seed(0)
    model = models.from_config(cfg.model, input_shape=input_shape, num_classes=num_classes, norm=make_norm)
    model = model.to(device)
    opts = fastpath.options(cfg.accuracy, images=len(input_shape) == 3)
    forward = fastpath.prepare(model, replace(opts, compile=False), 1 + len(input_shape))[0] if opts.enabled else model
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, foreach=True)
    x = torch.randn(batch, *input_shape, device=device)
    y = torch.randint(num_classes, (batch,), device=device)

    def step():
        with fastpath.autocast(opts, torch.device(device)):
            loss = F.cross_entropy(forward(x), y)
        sgd.zero_grad(set_to_none=True)
        loss.backward()
        sgd.step()

    step()  # the optimizer's state is made on the first step
    counter, flops = _CountOps(), FlopCounterMode(display=False)
    with counter, flops:
        step()
    return StepCost(counter.ops, float(flops.get_total_flops()))


def sweep_params(hydra_params: dict, cli: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """The swept keys and their values (the experiment's, then the command line's comma lists) and the
    plain overrides."""
    params = {str(k): [v.strip() for v in str(v).split(",")] for k, v in (hydra_params or {}).items()}
    plain = []
    for item in cli:
        key, _, value = item.partition("=")
        if "," in value and not value.startswith("["):
            params[key.lstrip("+")] = value.split(",")
        else:
            plain.append(item)
    return params, plain


def dataset_sizes(node: DictConfig) -> tuple[int, int, tuple[int, ...], int]:
    """Train and test samples, input shape and classes; CIFAR-10 from its config (no decoding)."""
    if str(node.get("_target_", "")).endswith("data.cifar10"):
        per_class = lambda key, full: node.get(key) or full  # noqa: E731
        return 10 * per_class("train_per_class", 5000), 10 * per_class("test_per_class", 1000), (3, 32, 32), 10
    d = datasets.load(node)
    return d.x_train.shape[0], d.x_test.shape[0], tuple(d.x_train.shape[1:]), d.num_classes


def compose(overrides: list[str]) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir, initialize_config_module

    from normbench.cli import CONFIGS

    init = (
        initialize_config_module("normbench.conf", version_base="1.3")
        if CONFIGS.startswith("pkg://")
        else initialize_config_dir(CONFIGS, version_base="1.3")
    )
    with init:
        return hydra_compose(config_name="accuracy", overrides=overrides, return_hydra_config=True)


def plan(cli: list[str]) -> list[str]:
    """The plan's lines for the accuracy app's overrides `cli`."""
    base = compose([o for o in cli if "," not in o.partition("=")[2] or o.partition("=")[2].startswith("[")])
    params, plain = sweep_params(OmegaConf.to_container(base.hydra.sweeper.params, resolve=False), cli)
    rates = {**CPU_PLAN, **(OmegaConf.to_container(base.plan, resolve=True) if base.get("plan") else {})}
    names = list(params)
    trainings: Counter = Counter()  # (norm, K) -> trainings
    jobs, first = 0, {}
    for values in itertools.product(*params.values()):
        job = dict(zip(names, values))
        jobs += 1
        cfg = first.get((job.get("norm"), job.get("accuracy.batch_size")))
        if cfg is None:
            cfg = compose([*plain, *(f"{k}={v}" for k, v in job.items() if k != "seed")])
            first[(job.get("norm"), job.get("accuracy.batch_size"))] = cfg
        split = accuracy.step_split(cfg.accuracy)
        k_free = split.protocol == "global_batch" and norms.batch_independent(cfg.norm.name)
        key = (cfg.norm.name, None if k_free else split.k, job.get("seed", cfg.seed))
        trainings[key] += 1
    lines = [f"plan for normbench-accuracy -m {' '.join(cli)}", f"jobs {jobs}, trainings {len(trainings)}"]
    per: Counter = Counter((norm, k) for norm, k, _ in trainings)
    any_cfg = next(iter(first.values()))
    n_train, n_test, shape, classes = dataset_sizes(any_cfg.dataset)
    epochs = int(any_cfg.accuracy.epochs)
    total_steps = total_device_s = total_host_s = images = 0.0
    lines.append(f"{'norm':>10} {'K':>3} {'trainings':>9} {'steps':>7} {'ops/step':>8} {'GFLOP/step':>10} {'s/training':>10}")
    for (norm, k), count in sorted(per.items(), key=lambda item: (item[0][0], item[0][1] or 0)):
        cfg = next(c for (n, kk), c in first.items() if c.norm.name == norm and (k is None or int(kk) == k))
        split = accuracy.step_split(cfg.accuracy)
        steps = epochs * (n_train // split.global_batch)
        # evaluation: each epoch's test pass and, for BatchNorm, batch statistics and PreciseBN: forward only
        eval_steps = (epochs + 2) * n_test / split.global_batch / 3
        cost = step_cost(cfg, shape, classes, split.global_batch)
        host_s = cost.ops * rates["host_us_per_op"] * 1e-6
        device_s = cost.ops * rates["gpu_us_per_op"] * 1e-6 + cost.flops / rates["device_flops"]
        run_steps = steps + eval_steps
        total_steps += count * run_steps
        total_host_s += count * run_steps * host_s
        total_device_s += count * run_steps * device_s
        images += count * steps * split.global_batch
        per_training = run_steps * max(host_s, device_s)
        lines.append(
            f"{norm:>10} {k or '-':>3} {count:>9} {steps:>7} {cost.ops:>8} {cost.flops / 1e9:>10.2f} {per_training:>10.1f}"
        )
    jobs_at_once = int(rates["jobs"])
    setup = len(trainings) * rates["setup_s"] / jobs_at_once + rates["startup_s"]
    if rates["shared_device"]:  # processes overlap their host work; the GPU runs one kernel at a time
        wall = max(total_host_s / jobs_at_once, total_device_s) + setup
    else:  # a core per process: host and compute are both the process's own
        wall = (total_host_s + total_device_s) / jobs_at_once + setup
    lines += [
        f"{len(trainings)} trainings x {epochs} epochs of {n_train} images: {images / 1e6:.1f} M images, "
        f"{total_steps:.0f} steps (evaluation included), {jobs_at_once} processes side by side",
        f"estimated wall time {wall:.0f} s ({wall / 60:.1f} min) on {rates['device']}"
        + (f", budget {rates['budget_s']:.0f} s: {'fits' if wall <= rates['budget_s'] else 'DOES NOT FIT'}"
           if rates.get("budget_s") else ""),
        f"basis: {rates['basis']}",
        "an ESTIMATE from assumed rates, not a measurement: a run's rows (samples_per_s, wall_s) measure it",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    try:
        print("\n".join(plan(list(sys.argv[1:] if argv is None else argv))))
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
