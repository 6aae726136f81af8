"""Put on the worker's path by tests/test_repro.py: the worker process registers the fake modes of
tests/repro_modes.py, as the test session does."""

import os

if os.environ.get("TORCHAO_NB_TEST_REPRO_MODES") == "1":  # only where the test asked, never on an import by accident
    from tests.repro_modes import register

    register()
