"""Fused kernels (Triton) behind the `triton` implementation (docs/triton.md).

    availability   can they run here (triton installed; CUDA or TRITON_INTERPRET=1), the one clear error
    layout         the grouped view as strides, and the fixed tiling heuristics that pick a path
    fused          slab kernels: one program per (b, groups), in registers (fused) or streamed (looped)
    split          split reductions: per-channel partial sums, a combine, an element-wise sweep
    launch_plan    each geometry's grids, scalar arguments and constexprs, computed once (a bounded cache)
    norm_function  the autograd Function and launches; `norm_forward` mirrors norms.core.norm_forward
    compile_check  compile every kernel for sm_90 without a GPU (python -m normbench.kernels.compile_check)

Nothing here imports triton at package import, so `import normbench` works without it.
"""
