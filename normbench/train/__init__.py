"""The accuracy job: the training loop and its fast path, optimizer, LR search, evaluation, reuse."""
