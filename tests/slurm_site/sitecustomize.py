"""Put on PYTHONPATH by tests/test_slurm.py's jobs (--setup): every Python they start, the sweep's worker
process included, registers the test models of tests/job_models.py."""

import os

if os.environ.get("TORCHAO_NB_TEST_JOB_MODELS") == "1":  # only where the test asked, never on an import by accident
    from tests.job_models import register

    register()
