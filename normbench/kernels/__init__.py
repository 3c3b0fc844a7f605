"""Fused kernels (Triton) behind the `triton` implementation (docs/triton.md).

    availability   can they run here (triton installed; CUDA or TRITON_INTERPRET=1), the one clear error
    settings       KernelSettings: the cooperative kernels, a forced path, the GPU planned for (a value)
    layout         the grouped view as strides, and the fixed tiling heuristics that pick a path
    fused          slab kernels: one program per (b, groups), in registers (fused) or streamed (looped)
    split          split reductions: per-channel partial sums, a combine, an element-wise sweep
    coop           cooperative kernels: one launch per pass that reads each byte of x (and dy) once
    launch_plan    each geometry's grids, scalar arguments and constexprs, computed once (a bounded cache)
    norm_function  the autograd Function and launches; `norm_forward` mirrors norms.core.norm_forward

Developer tools that check these kernels without a GPU are in normbench.tools, each a `python -m`
command and imported by nothing in the library: trace (the launches a shape makes), traffic (bytes each plan moves),
hbm_bytes (those bytes against Nsight Compute), host_cost (host time per pass), compile_check
(compile every kernel for sm_90).

Nothing here imports triton at package import, so `import normbench` works without it.
"""
