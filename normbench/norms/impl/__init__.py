"""The implementations of each registered norm: reference (the spec), native, compiled, triton."""
