"""Fused kernels (Triton) behind the `triton` implementation (docs/triton.md).

    availability   can they run here (triton installed; CUDA or TRITON_INTERPRET=1), the one clear error
    settings       KernelSettings: the cooperative kernels, a forced path, the GPU planned for (a value)
    layout         the grouped view as strides, and the fixed tiling heuristics that pick a path
    fused          slab kernels: one program per (b, groups), in registers (fused) or streamed (looped)
    split          split reductions: per-channel partial sums, a combine, an element-wise sweep
    launch_plan    each geometry's grids, scalar arguments and constexprs, computed once (a bounded cache)
    norm_function  the autograd Function and launches; `norm_forward` mirrors norms.core.norm_forward
    coop           the cooperative one-read kernels (KernelSettings.cooperative)
    compile_check  compile every kernel for sm_90 without a GPU (python -m normbench.kernels.compile_check)
    trace          the launches a shape makes, recorded on meta tensors (traffic, compile_check, tests)
    traffic        HBM bytes per plan from a cache model; hbm_bytes checks it with ncu on a GPU
    host_cost      host microseconds per pass with the launches stubbed

Nothing here imports triton at package import, so `import normbench` works without it.
"""
