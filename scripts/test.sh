#!/usr/bin/env bash
# Sets up .venv with the test extras and runs the whole test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
# The browser tests drive Debian's chromium (never `playwright install`'s downloaded browsers).
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "test: installing chromium for tests/browser"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
# tests/test_slurm.py starts its own one-node SLURM cluster from Debian's slurm-wlm and munge (no systemd needed).
if ! command -v slurmctld >/dev/null 2>&1 && [ ! -x /usr/sbin/slurmctld ] && [ "$(id -u)" = 0 ] \
    && command -v apt-get >/dev/null 2>&1; then
  echo "test: installing slurm-wlm and munge for tests/test_slurm.py"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi
# Two workers (pytest-xdist) on CI's two cores: many tests wait (SLURM jobs, JupyterLab, subprocesses starting) while
# the other worker computes. Each test file is one unit of work (--dist loadfile), so a module- or session-scoped
# fixture (the SLURM cluster, a shared sweep) is set up once; tests/conftest.py orders the longest files first, and
# --no-loadscope-reorder keeps that order (not --dist loadgroup: with pytest 9.2, pytest-xdist 3.8 silently ignores
# xdist_group marks, pytest-xdist issue 1386). `-n 0` after these runs everything in one process.
.venv/bin/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder "$@"
