import os

import torch

# Triton reads TRITON_INTERPRET when a kernel is defined, so it must be set before anything imports
# triton: without a GPU, impl=triton then runs its kernels on the CPU through the interpreter.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
