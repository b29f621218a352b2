#!/usr/bin/env bash
# The whole test suite from a fresh clone: sets up, lints, then runs pytest on 2 workers.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
.venv/bin/ruff check src tests benchmarks
.venv/bin/ruff format --check src tests benchmarks
.venv/bin/python -m pytest -n 2 --durations=15 "$@"
