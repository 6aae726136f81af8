"""Put on PYTHONPATH by tests/test_slurm.py's jobs (--setup): every Python they start, the sweep's worker
process included, registers the model `crashes-quantized`, whose kernel crashes once a mode quantized it."""

import os

if os.environ.get("TORCHAO_NB_TEST_CRASH_MODEL") == "1":  # only where the test asked, never on an import by accident
    from tests.crashing_model import register

    register()
