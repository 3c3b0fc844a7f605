"""A minute's check that impl=triton runs on this GPU before a device run times it: one training step
per norm and layout at a small shape, its y and dx against native's (max error relative to the largest
value, < 1e-3 in float32). Exit status 1 if any differs or fails.

    python scripts/gpu_smoke_triton.py                       # on a CUDA GPU
    TRITON_INTERPRET=1 python scripts/gpu_smoke_triton.py    # on the CPU (tiny shape)
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from normbench import norms


def main() -> int:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    shape = (32, 64, 56, 56) if device == "cuda" else (4, 16, 5, 5)
    failed = 0
    for norm, options in (("bn", {}), ("ln", {}), ("in", {}), ("gn", {"groups": 4})):
        for fmt in (torch.contiguous_format, torch.channels_last):
            x = torch.randn(shape, device=device).mul_(2).add_(3).to(memory_format=fmt).requires_grad_()
            dy = torch.randn(shape, device=device)
            out = []
            for impl in ("native", "triton"):
                layer = norms.build(norm, shape[1], impl=impl, device=device, **options)
                y = layer(x)
                y.backward(dy)
                out.append((y.detach(), x.grad))
                x.grad = None
            errs = [float((a - b).abs().max() / b.abs().max()) for a, b in zip(out[1], out[0])]
            ok = max(errs) < 1e-3
            failed += not ok
            name = "channels_last" if fmt is torch.channels_last else "contiguous"
            print(f"{'ok  ' if ok else 'FAIL'} {norm} {name}: y {errs[0]:.2e}, dx {errs[1]:.2e}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
