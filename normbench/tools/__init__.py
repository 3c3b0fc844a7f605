"""Developer tools for the kernels, each a `python -m normbench.tools.NAME` command, run without a GPU
where they can; nothing in the library imports them (tests/test_layering.py)."""
