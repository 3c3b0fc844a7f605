#!/usr/bin/env bash
# The device call is scripts/gpu_run.py (docs/gpu_reference_run.md); this wrapper keeps the command
# that the results READMEs name working. TINY=1 rehearses on the CPU (--tiny); arguments pass
# through (--dry-run, --full, --steps host,rows, --budget-s N).
set -euo pipefail
tiny=()
[[ ${TINY:-0} == 1 ]] && tiny=(--tiny)
exec python3 "$(dirname "$0")/gpu_run.py" "${tiny[@]}" "$@"
