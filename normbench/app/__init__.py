"""The entry points: the Hydra apps (cli), the sweep callback, --list, plan and selfcheck."""
