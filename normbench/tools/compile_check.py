"""Compile every kernel for an H100 (sm_90) on a machine without a GPU, and count its vector accesses.

    TRITON_INTERPRET=0 python -m normbench.tools.compile_check [fp32] [bf16] [fp16]
    TRITON_INTERPRET=0 python -m normbench.tools.compile_check plans
    TRITON_INTERPRET=0 python -m normbench.tools.compile_check align

`plans` compiles exactly what the dispatch launches for the GPU sweep's shapes (kernels.trace: every
norm x dtype x layout, forward and backward, as planned for an H100), each distinct specialization once,
with the default plans and with the cooperative kernels on. `align` compiles the NCHW launches at
14 x 14 with and without their ALIGN hint (layout.GroupedView.align) and compares their memory
instructions.

The interpreter runs kernels as Python and forgives what the compiler does not (the type of a value
carried through a loop, a constexpr used as a tensor); this lowers each kernel through Triton's
whole pipeline to a cubin for sm_90. The arguments are specialized as they are at run time on aligned,
dense inputs (unit stride as a constant, pointers, sizes and the other strides divisible by 16), so
the counts of vector loads and stores (ld/st.global.v2/.v4) in the PTX show whether the tiles coalesce.
Exit status 77: the compiler cannot run here (no NVIDIA backend, or the interpreter is on).
"""

from __future__ import annotations

import inspect
import re
import sys

POINTERS = {"x", "y", "dy", "dx"}  # in the input's dtype; the other pointers are float32 here
INTEGERS = {
    "C",
    "L",
    "G",
    "Cg",
    "sb",
    "sk",
    "sc",
    "sl",
    "T",
    "TPS",
    "S",
    "CB",
    "NLB",
    "SLABS",
    "B",
    "SPB",
    "GBLK",
    "NUC",
    "U",
    "D",
}
FLOATS = {"eps", "inv_count", "factor", "unbias"}


def _cases():
    from normbench.kernels import coop, fused, split

    nchw = {"sl": 1}  # positions innermost
    nhwc = {"sc": 1}  # channels innermost
    slab = dict(HAS_AFFINE=True, GPB=4, BLOCK_C=8, BLOCK_L=512, ALIGN=1)  # sizes divisible by 16: no hint
    row = dict(HAS_AFFINE=False, GPB=1, BLOCK_C=1024, BLOCK_L=1, ALIGN=1)
    tile_nchw = dict(BLOCK_C=4, BLOCK_L=1024, ALIGN=1)
    tile_nhwc = dict(BLOCK_C=64, BLOCK_L=64, ALIGN=1)
    coop_meta = dict(GPB=1, BLOCK_S=64, STAGES=2, BATCH=4)
    return [
        (fused.fused_forward, {**nchw, **slab}),
        (fused.fused_forward, {**nhwc, **dict(slab, GPB=16, BLOCK_C=32, BLOCK_L=128)}),
        (fused.fused_forward, {"sl": 0, "sc": 1, **row}),  # (N, C) rows: L == 1 passes sl = 0
        (fused.fused_backward, {**nchw, **slab}),
        (fused.fused_backward, {**nhwc, **dict(slab, GPB=16, BLOCK_C=32, BLOCK_L=128)}),
        (fused.looped_forward, {**nchw, **slab}),
        (fused.looped_backward, {**nhwc, **dict(slab, GPB=16, BLOCK_C=32, BLOCK_L=128)}),
        (split.partial_moments, {**nchw, **tile_nchw}),
        (split.partial_moments, {**nhwc, **tile_nhwc}),
        (split.combine_moments, {"BLOCK": 256, "RUNNING": False}),
        (split.combine_moments, {"BLOCK": 256, "RUNNING": True}),
        (split.update_running, {"BLOCK": 256}),
        (split.normalize, {**nchw, **tile_nchw, "HAS_AFFINE": True}),
        (split.normalize, {**nhwc, **tile_nhwc, "HAS_AFFINE": False}),
        (split.partial_grad_sums, {**nhwc, **tile_nhwc}),
        (split.combine_grad_sums, {"BLOCK": 256, "HAS_AFFINE": True, "PARAM_GRADS": False}),
        (split.combine_grad_sums, {"BLOCK": 256, "HAS_AFFINE": True, "PARAM_GRADS": True}),
        (split.input_grad, {**nchw, **tile_nchw, "HAS_AFFINE": True, "CONSTANT_STATS": False}),
        (split.input_grad, {**nhwc, **tile_nhwc, "HAS_AFFINE": True, "CONSTANT_STATS": True}),
        # Triton turns an int argument equal to 1 into a constant: ln (G = 1), in (Cg = 1), one split.
        (fused.looped_forward, {**nchw, "G": 1, **slab, "GPB": 1}),
        (fused.fused_backward, {**nhwc, "Cg": 1, **dict(slab, GPB=32, BLOCK_C=32, BLOCK_L=64)}),
        (split.partial_moments, {**nchw, "S": 1, "NLB": 1, "TPS": 1, "CB": 1, **tile_nchw}),
        (coop.coop_forward, {**nchw, **tile_nchw, **coop_meta, "HAS_AFFINE": True, "RUNNING": True}),
        (coop.coop_forward, {**nhwc, **tile_nhwc, **dict(coop_meta, GPB=4), "HAS_AFFINE": False, "RUNNING": False}),
        (coop.coop_backward, {**nchw, **tile_nchw, **coop_meta, "HAS_AFFINE": True, "PARAM_GRADS": True}),
        (coop.coop_backward, {**nhwc, **tile_nhwc, **dict(coop_meta, GPB=4), "HAS_AFFINE": True, "PARAM_GRADS": False}),
    ]


def compile_for_sm90(kernel, constants: dict, dtype: str = "bf16", num_warps: int = 8):
    import triton
    from triton.backends.compiler import GPUTarget

    names = list(inspect.signature(kernel.fn).parameters)
    signature, aligned = {}, []
    for name in names:
        if name in constants:
            signature[name] = "constexpr"
        elif name in FLOATS:
            signature[name] = "fp32"
        elif name in POINTERS:
            signature[name], aligned = f"*{dtype}", aligned + [name]
        elif name == "sync":  # the cooperative kernels' int32 counters
            signature[name], aligned = "*i32", aligned + [name]
        elif name in INTEGERS:
            signature[name] = "i32"
            if name in ("C", "L", "Cg", "sb", "sk", "sc", "sl"):  # sizes and strides of an aligned input
                aligned.append(name)
        else:  # statistics, partial sums, weight and bias
            signature[name], aligned = "*fp32", aligned + [name]
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in aligned}
    source = triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=constants, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})


_TYPES = {"torch.float32": "fp32", "torch.bfloat16": "bf16", "torch.float16": "fp16", "torch.int32": "i32"}


def launch_source(launch):
    """(ASTSource, options, key) for a recorded launch, specialized as Triton does at run time.

    Integers equal to 1 become constants, integers and (aligned) pointers divisible by 16 get that
    divisibility, floats are fp32: the same cubin the GPU would compile for this launch.
    """
    import triton

    names = list(inspect.signature(launch.kernel.fn).parameters)
    values = dict(zip(names, launch.args))
    constexprs = {k: v for k, v in launch.meta.items() if k in names}
    options = {k: v for k, v in launch.meta.items() if k not in names}
    signature, aligned = {}, []
    for name in names:
        v = values.get(name, constexprs.get(name))
        if name in constexprs:
            signature[name] = "constexpr"
        elif hasattr(v, "dtype"):  # a tensor: torch allocations are aligned to far more than 16 bytes
            signature[name], aligned = "*" + _TYPES[str(v.dtype)], aligned + [name]
        elif isinstance(v, bool):
            signature[name] = "i1"
        elif isinstance(v, int) and v == 1:
            signature[name], constexprs[name] = "constexpr", 1
        elif isinstance(v, int):
            signature[name] = "i32" if -(2**31) <= v < 2**31 else "i64"
            if v % 16 == 0:
                aligned.append(name)
        else:
            signature[name] = "fp32"
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in aligned}
    key = (
        launch.name,
        tuple(signature.items()),
        tuple(sorted(constexprs.items())),
        tuple(sorted(aligned)),
        tuple(sorted(options.items())),
    )
    source = triton.compiler.ASTSource(fn=launch.kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    return source, options, key


def sweep_launches():
    """{key: (launch, first case that makes it)} over the GPU sweep, forward and backward, plus eval bn,
    with the default plans and with the cooperative kernels on (KernelSettings.cooperative)."""
    from normbench.tools import trace

    distinct = {}
    cases = [(*c, True) for c in trace.sweep_cases()]
    cases += [("bn", s, shape, d, lay, False) for n, s, shape, d, lay, _ in cases if n == "bn"]
    for cooperative in (False, True):
        for norm, shape_name, shape, dtype_name, layout_name, train in cases:
            dtype = trace.DTYPES[dtype_name]
            passes = trace.trace(norm, shape, dtype, layout_name, train=train, cooperative=cooperative)
            for pass_name, p in passes.items():
                for launch in p.launches:
                    _, _, key = launch_source(launch)
                    mode = "" if train else " eval"
                    case = f"{norm}{mode} {shape_name} {dtype_name} {layout_name} {pass_name}"
                    distinct.setdefault(key, (launch, case))
    return distinct


def _compile_share(worker: int, workers: int) -> tuple[int, list[str]]:
    """Compile every `workers`-th distinct launch from number `worker` on: (how many, the failures)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler.errors import CompilationError

    share = list(sweep_launches().values())[worker::workers]
    failures = []
    for launch, case in share:
        source, options, _ = launch_source(launch)
        try:
            triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
        except (RuntimeError, CompilationError) as e:  # report every failing plan, not only the first
            failures.append(f"FAILED {launch.name} {launch.meta} ({case}): {type(e).__name__}: {str(e)[-300:]}")
    return len(share), failures


def compile_plans() -> int:
    """Compile each distinct launch of the GPU sweep for sm_90, shared among one process per CPU (each
    compile is single-threaded Python and LLVM); print the failures; 1 if any."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    workers = max(1, min(8, os.cpu_count() or 1))
    context = multiprocessing.get_context("spawn")  # no fork of a process that has imported torch
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        results = list(pool.map(_compile_share, range(workers), [workers] * workers))
    total = sum(n for n, _ in results)
    failures = [f for _, share in results for f in share]
    for line in failures:
        print(line)
    print(f"{total - len(failures)} of {total} distinct launches of the GPU sweep compile for sm_90")
    return 1 if failures else 0


def memory_instructions(ptx: str) -> tuple[int, int]:
    """(global loads and stores in the PTX, those of them that are vector: v2/v4)."""
    every = len(re.findall(r"(?:ld|st)\.global", ptx))
    return every, len(re.findall(r"(?:ld|st)\.global[.\w]*\.v[24]\.", ptx))


def compare_align(shape=(1024, 256, 14, 14)) -> int:
    """Each launch the dispatch makes at this NCHW shape (resnet_c256: L = 196 = 4 x 49, which Triton's
    divisibility-by-16 specialization does not see), compiled with its planned ALIGN and with ALIGN = 1
    (no hint): the global loads and stores in each PTX. 1 if the hint leaves any launch with as many."""
    import triton
    from triton.backends.compiler import GPUTarget

    from normbench.tools import trace

    worse = 0
    for norm in trace.NORMS:
        for dtype_name in ("fp32",):  # bf16 gives the same counts
            for pass_name, p in trace.trace(norm, shape, trace.DTYPES[dtype_name], "contiguous").items():
                for launch in p.launches:
                    if launch.meta.get("ALIGN", 1) == 1:
                        continue
                    counts = []
                    for meta in (launch.meta, {**launch.meta, "ALIGN": 1}):
                        source, options, _ = launch_source(trace.Launch(launch.kernel, launch.grid, launch.args, meta))
                        target = GPUTarget("cuda", 90, 32)
                        counts.append(
                            memory_instructions(triton.compile(source, target=target, options=options).asm["ptx"])
                        )
                    (hinted, hinted_vec), (plain, plain_vec) = counts
                    worse += hinted >= plain
                    print(
                        f"{norm} {dtype_name} {pass_name} {launch.name} ALIGN={launch.meta['ALIGN']}: "
                        f"{hinted} global loads/stores ({hinted_vec} vector), {plain} without the hint ({plain_vec})"
                    )
    return 1 if worse else 0


def main() -> int:
    try:
        import triton.backends.nvidia  # noqa: F401
        from triton import knobs
    except ImportError as e:
        print(f"no NVIDIA Triton backend: {e}")
        return 77
    if knobs.runtime.interpret:
        print("TRITON_INTERPRET is on: kernels are interpreted, not compiled; run with TRITON_INTERPRET=0")
        return 77
    if sys.argv[1:] == ["plans"]:
        return compile_plans()
    if sys.argv[1:] == ["align"]:
        return compare_align()
    for dtype in sys.argv[1:] or ("fp32", "bf16"):
        for kernel, constants in _cases():
            ptx = compile_for_sm90(kernel, constants, dtype).asm["ptx"]
            loads = len(re.findall(r"ld\.global[.\w]*\.v[24]\.", ptx))
            stores = len(re.findall(r"st\.global[.\w]*\.v[24]\.", ptx))
            layout = "nchw" if constants.get("sl") == 1 else "nhwc" if constants.get("sc") == 1 else "-"
            print(f"{kernel.fn.__name__:18s} {dtype} {layout}: {loads} vector loads, {stores} vector stores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
