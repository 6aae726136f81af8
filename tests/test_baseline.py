import pytest
import torch

from torchao_nb import baseline


def test_settings_apply_inside_and_restore_after():
    before = baseline.snapshot()
    with baseline.applied(True) as states:
        assert torch._dynamo.config.cache_size_limit == 10000
        assert torch._inductor.config.force_fuse_int_mm_with_mul is True
        assert torch._dynamo.config.automatic_dynamic_shapes is False
        assert any(s.applied for s in states)
    assert baseline.snapshot() == before


def test_restored_when_the_body_raises():
    before = baseline.snapshot()
    with pytest.raises(RuntimeError):
        with baseline.applied(True):
            assert torch._dynamo.config.cache_size_limit == 10000
            raise RuntimeError("cell failed")
    assert baseline.snapshot() == before


def test_disabled_changes_nothing():
    before = baseline.snapshot()
    with baseline.applied(False) as states:
        assert baseline.snapshot() == before
        assert states == []


def test_missing_key_is_reported_not_fatal():
    settings = baseline.BASELINE_SETTINGS + (
        baseline.Setting("torch._inductor.config.no_such_setting_anywhere", 1, "test"),
    )
    states = {s.key: s for s in baseline.describe(settings)}
    missing = states["torch._inductor.config.no_such_setting_anywhere"]
    assert not missing.applied and "no such setting" in missing.note
    with baseline.applied(True, settings):
        assert torch._dynamo.config.cache_size_limit == 10000


def test_epilogue_fusion_is_documented_and_not_set():
    states = {s.key: s for s in baseline.describe()}
    st = states["torch._dynamo.epilogue_fusion"]
    assert not st.applied and "nothing" in st.note
    had = hasattr(torch._dynamo, "epilogue_fusion")
    with baseline.applied(True):
        assert hasattr(torch._dynamo, "epilogue_fusion") == had
    records = {r["key"]: r for r in baseline.describe_dicts()}
    assert records["torch._dynamo.config.cache_size_limit"]["new"] == 10000
    assert records["torch._dynamo.config.cache_size_limit"]["applied"] is True


def test_preserved_compiler_configs_undo_library_changes():
    old = torch._inductor.config.coordinate_descent_tuning
    with baseline.preserved_compiler_configs():
        torch._inductor.config.coordinate_descent_tuning = not old
    assert torch._inductor.config.coordinate_descent_tuning == old
