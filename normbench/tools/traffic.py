"""Bytes each plan moves from HBM, next to the byte model, without a GPU.

    python -m normbench.tools.traffic            # the GPU sweep's shapes, planned for an H100
    python -m normbench.tools.traffic --coop     # the same with the cooperative kernels on

For every norm x layout x dtype x pass at the GPU sweep's shapes, the launches impl=triton makes
(kernels.trace: planned for 132 SMs and 50 MB of L2) are replayed through a simple cache model:

- every byte a kernel writes goes to HBM once; a read comes from HBM unless the model says L2;
- a looped kernel's second read of its slab comes from L2 when the slabs of all its persistent
  programs fit `layout.L2_SHARE` of the L2 together (what layout.looped_programs sizes them for);
- a cooperative kernel's second read of a work item comes from L2 when the D items read between
  its two touches fit that share (what layout.coop_plan sizes D and the items for);
- a tensor read again by a later launch of the same pass comes from L2 when it and everything
  touched since fit that share of the L2 (least recently used, whole tensors); nothing survives
  from forward to backward (the model's other layers run in between).

`speed.bytes_moved` is the floor any implementation must move (2 S forward, 3 S backward plus the
O(C) terms); the ratio planned / model says how far from one HBM read each plan is.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

# Which tensor arguments each kernel reads (r), reads twice within one program (rr: looped) or writes.
ROLES = {
    "fused_forward": {"x": "r", "y": "w", "w": "r", "bias": "r", "mean_out": "w", "var_out": "w", "rstd_out": "w"},
    "looped_forward": {"x": "rr", "y": "w", "w": "r", "bias": "r", "mean_out": "w", "var_out": "w", "rstd_out": "w"},
    "fused_backward": {
        "x": "r",
        "dy": "r",
        "dx": "w",
        "w": "r",
        "mean": "r",
        "rstd": "r",
        "p_dy": "w",
        "p_dyxhat": "w",
    },
    "looped_backward": {
        "x": "rr",
        "dy": "rr",
        "dx": "w",
        "w": "r",
        "mean": "r",
        "rstd": "r",
        "p_dy": "w",
        "p_dyxhat": "w",
    },
    "partial_moments": {"x": "r", "mean_p": "w", "m2_p": "w", "count_p": "w"},
    "combine_moments": {"mean_p": "r", "m2_p": "r", "count_p": "r", "mean_out": "w", "var_out": "w", "rstd_out": "w"},
    "normalize": {"x": "r", "y": "w", "w": "r", "bias": "r", "mean": "r", "rstd": "r"},
    "partial_grad_sums": {"x": "r", "dy": "r", "mean": "r", "rstd": "r", "p_dy": "w", "p_dyxhat": "w"},
    "combine_grad_sums": {"p_dy": "r", "p_dyxhat": "r", "w": "r", "a_out": "w", "b_out": "w"},
    "input_grad": {"x": "r", "dy": "r", "dx": "w", "w": "r", "mean": "r", "rstd": "r", "mean_g": "r", "mean_gx": "r"},
    # cooperative: "rc", read twice, the second time from L2 when the items in flight between fit
    "coop_forward": {
        "x": "rc",
        "y": "w",
        "w": "r",
        "bias": "r",
        "mean_p": "w",
        "m2_p": "w",
        "mean_out": "w",
        "var_out": "w",
        "rstd_out": "w",
        "sync": "w",
    },
    "coop_backward": {
        "x": "rc",
        "dy": "rc",
        "dx": "w",
        "w": "r",
        "mean": "r",
        "rstd": "r",
        "p_dy": "w",
        "p_dyxhat": "w",
        "mean_g": "w",
        "mean_gx": "w",
        "sync": "w",
    },
}


@dataclass
class Traffic:
    hbm: int  # bytes from and to HBM
    l2: int  # bytes read again that the model serves from L2


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _reread(launch, role: str) -> tuple[dict, int]:
    """The launch's arguments by name, and the bytes per value of the tensors it reads twice (`role`)."""
    args = dict(zip(_params(launch), launch.args))
    return args, sum(args[n].element_size() for n, r in ROLES[launch.name].items() if r == role)


def _looped_fits(launch, l2_bytes: int, share: float) -> bool:
    """Whether the persistent programs' slabs (every tensor read twice) fit the L2 share together."""
    args, per_value = _reread(launch, "rr")
    programs = launch.grid[0]
    return programs * launch.meta["BLOCK_C"] * args["L"] * per_value <= share * l2_bytes


def _coop_fits(launch, l2_bytes: int, share: float) -> bool:
    """Whether the D work items between an item's two touches (x; x and dy backward) fit the L2 share."""
    args, per_value = _reread(launch, "rc")
    tile = launch.meta["BLOCK_C"] * launch.meta["BLOCK_L"]
    return args["D"] * args["TPS"] * tile * per_value <= share * l2_bytes


def _params(launch):
    import inspect

    return inspect.signature(launch.kernel.fn).parameters


def pass_traffic(p, l2_bytes: int, share: float) -> Traffic:
    """Replay one pass's launches (kernels.trace.Pass) through the cache model."""
    hbm = l2 = 0
    recent: list[tuple[int, int]] = []  # (storage id, bytes), most recent last

    def touch(t: torch.Tensor, read: bool) -> None:
        nonlocal hbm, l2
        key, size = id(t), _nbytes(t)  # the Function passes the same tensor objects to each launch
        ids = [k for k, _ in recent]
        if read and key in ids:
            since = sum(s for _, s in recent[ids.index(key) :])  # it and everything touched after it
            if since <= share * l2_bytes:
                l2 += size
            else:
                hbm += size
            del recent[ids.index(key)]
        else:
            hbm += size  # a write, or a first read
        recent.append((key, size))

    for launch in p.launches:
        args = dict(zip(_params(launch), launch.args))
        roles = ROLES[launch.name]
        for name, role in roles.items():
            t = args[name]
            if role == "w":
                touch(t, read=False)
            else:
                touch(t, read=True)
                fits = {"rr": _looped_fits, "rc": _coop_fits}.get(role)
                if fits is not None:  # the second read within the kernel
                    if fits(launch, l2_bytes, share):
                        l2 += _nbytes(t)
                    else:
                        hbm += _nbytes(t)
    hbm += sum(p.torch_bytes)  # the torch operators' inputs and outputs (small: O(C) or partials)
    return Traffic(hbm, l2)


def model_bytes(norm: str, shape, dtype: torch.dtype, pass_name: str) -> int:
    """speed.bytes_moved for the registry's default layer of that name at this input."""
    from normbench import norms
    from normbench.bench import speed
    from normbench.tools.trace import GN_GROUPS

    options = {"groups": GN_GROUPS} if norm == "gn" else {}
    layer = norms.build(norm, shape[1], impl="reference", device="meta", **options)
    return speed.bytes_moved(layer, torch.empty(shape, dtype=dtype, device="meta"), pass_name)


def table(l2_bytes: int | None = None, share: float | None = None, cooperative: bool = False) -> list[dict]:
    """One row per GPU-sweep case and pass: the plan's kernels, planned HBM bytes, the model, the ratio.
    cooperative: as planned with KernelSettings.cooperative on (the cooperative kernels where they fit)."""
    from normbench.kernels import layout
    from normbench.tools import trace

    l2_bytes = trace.H100[1] if l2_bytes is None else l2_bytes
    share = layout.L2_SHARE if share is None else share
    rows = []
    for norm, shape_name, shape, dtype_name, layout_name in trace.sweep_cases():
        dtype = trace.DTYPES[dtype_name]
        plan_for = (trace.H100[0], l2_bytes)
        passes = trace.trace(norm, shape, dtype, layout_name, plan_for=plan_for, cooperative=cooperative)
        for pass_name, p in passes.items():
            t = pass_traffic(p, l2_bytes, share)
            model = model_bytes(norm, shape, dtype, pass_name)
            size = torch.Size(shape).numel() * dtype.itemsize
            rows.append(
                {
                    "shape": shape_name,
                    "layout": layout_name,
                    "dtype": dtype_name,
                    "norm": norm,
                    "pass": pass_name,
                    "path": "+".join(dict.fromkeys(launch.name for launch in p.launches)),
                    "input_mb": size / 1e6,
                    "planned_mb": t.hbm / 1e6,
                    "model_mb": model / 1e6,
                    "ratio": t.hbm / model,
                    "launches": p.count,
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--coop", action="store_true", help="plan with KernelSettings.cooperative on")
    rows = table(cooperative=parser.parse_args(argv).coop)
    print(
        "| shape | layout | dtype | norm | pass | kernels | input MB | planned HBM MB | model MB "
        "| planned / model | launches |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['shape']} | {r['layout']} | {r['dtype']} | {r['norm']} | {r['pass']} | {r['path']} | "
            f"{r['input_mb']:.0f} | {r['planned_mb']:.0f} | {r['model_mb']:.0f} | {r['ratio']:.2f} | {r['launches']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
