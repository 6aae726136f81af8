"""autoquant: the per-layer decision (fake clock and fake modes), the cache, real torchao modes, its table and figure."""

import math
from dataclasses import dataclass, field

import matplotlib
import pytest
import torch
from torch import nn
from torch.nn import functional as F

matplotlib.use("Agg")

from torchao.core.config import AOBaseConfig  # noqa: E402
from torchao.quantization.transform_module import register_quantize_module_handler  # noqa: E402

from torchao_nb import UserError, autoquant, measure, modes as modes_mod, plots, sweep, tables  # noqa: E402
from torchao_nb.cli import main  # noqa: E402
from torchao_nb.env import DeviceInfo  # noqa: E402
from torchao_nb.modes import ApplyContext, Mode  # noqa: E402

from .conftest import NoLinear  # noqa: E402

CPU = DeviceInfo("cpu", "test cpu", None, True)


# ---- a fake clock and fake modes whose speed and accuracy the test decides ---------------------------

class FakeClock:
    """Seconds that pass only when a (fake) layer runs."""

    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def advance(self, ms: float) -> None:
        self.t += ms / 1e3


CLOCK = FakeClock()
NOQUANT_MS = 1.0  # every plain layer call


class TimedLinear(nn.Linear):
    def forward(self, x):
        CLOCK.advance(NOQUANT_MS)
        return super().forward(x)


@dataclass
class FakeConfig(AOBaseConfig):
    ms: dict = field(default_factory=dict)  # in_features → ms per call
    noise: float = 0.0  # RMS noise added to the output, relative to its RMS: SQNR ≈ -20 log10(noise)


class FakeQuantized(nn.Module):
    def __init__(self, lin: nn.Linear, config: FakeConfig):
        super().__init__()
        self.lin, self.config = lin, config

    def forward(self, x):
        CLOCK.advance(self.config.ms[self.lin.in_features])
        out = F.linear(x, self.lin.weight, self.lin.bias)
        g = torch.Generator().manual_seed(0)
        rms = out.float().pow(2).mean().sqrt()
        return out + (self.config.noise * rms * torch.randn(out.shape, generator=g)).to(out.dtype)


@register_quantize_module_handler(FakeConfig)
def _fake_handler(module, config):
    return FakeQuantized(module, config)


# Three layers with different in_features; BASE is 1 ms for each.
FAKE_MODES = {
    "fastsmall": FakeConfig({128: 0.5, 256: 0.98, 64: 0.99}, noise=0.01),  # ~40 dB; wins layer a
    "fastbig": FakeConfig({128: 0.9, 256: 0.4, 64: 0.99}, noise=0.01),  # wins layer b
    "sloppy": FakeConfig({128: 0.1, 256: 0.1, 64: 0.1}, noise=0.5),  # fastest everywhere, ~6 dB
}


class ThreeLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = TimedLinear(128, 256), TimedLinear(256, 64), TimedLinear(64, 128)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


@pytest.fixture
def fake_modes(monkeypatch):
    CLOCK.t = 0.0
    for name, cfg in FAKE_MODES.items():
        monkeypatch.setitem(modes_mod.MODES, name, Mode(name, "test mode", lambda info, dtype, cfg=cfg: cfg))
    torch.manual_seed(0)
    return ThreeLayers(), (torch.randn(2, 128),)


def ctx(cache_dir, **search):
    search.setdefault("candidates", tuple(FAKE_MODES))
    return ApplyContext("cpu", policy=measure.FAST_POLICY, clock=CLOCK,
                        settings=autoquant.SearchSettings(cache_dir=str(cache_dir), **search))


# ---- the decision -----------------------------------------------------------------------------------

def test_layers_get_different_choices_and_the_table_shows_them(fake_modes, tmp_path):
    model, x = fake_modes
    report = autoquant.apply(model, CPU, torch.float32, x, ctx(tmp_path))
    table = tables.decision_table(report.extra)
    assert list(table["layer"]) == ["a", "b", "c"]
    assert list(table["choice"]) == ["fastsmall", "fastbig", "noquant"]
    assert list(table["noquant ms"]) == pytest.approx([NOQUANT_MS] * 3)
    assert list(table["fastbig ms"]) == pytest.approx([0.9, 0.4, 0.99])
    assert (table["sloppy dB"] < autoquant.DEFAULT_SQNR_FLOOR_DB).all()  # fastest, but rejected by the floor
    assert (table["fastsmall dB"] > 35).all() and math.isinf(table["noquant dB"][0])
    layers = {row["layer"]: row for row in report.extra["autoquant"]["layers"]}
    assert layers["a"]["candidates"]["sloppy"]["status"] == "below floor"
    assert layers["c"]["candidates"]["fastsmall"]["status"] == "not faster"  # 1% faster < the 5% margin
    assert "5% faster" in layers["c"]["why"]
    # applied exactly as decided
    assert isinstance(model.a, FakeQuantized) and isinstance(model.b, FakeQuantized) and type(model.c) is TimedLinear
    assert model.a.config is FAKE_MODES["fastsmall"] and model.b.config is FAKE_MODES["fastbig"]
    assert (report.layers_quantized, report.layers_total) == (2, 3)
    assert set(report.skipped_layers) == {"c"}
    assert report.recipe["fqn_to_config"].keys() == {"a", "b"}


def test_a_floor_that_rejects_everything_leaves_the_model_unquantized(fake_modes, tmp_path):
    model, x = fake_modes
    report = autoquant.apply(model, CPU, torch.float32, x, ctx(tmp_path, sqnr_floor_db=60))
    assert report.layers_quantized == 0
    assert all(type(m) is TimedLinear for m in (model.a, model.b, model.c))
    assert all("no candidate kept SQNR >= 60 dB" in why for why in report.skipped_layers.values())


def test_a_lower_floor_admits_the_sloppy_mode(fake_modes, tmp_path):
    model, x = fake_modes
    report = autoquant.apply(model, CPU, torch.float32, x, ctx(tmp_path, sqnr_floor_db=3))
    table = report.extra["autoquant"]
    assert "sloppy" in {r["choice"] for r in table["layers"]}  # ~6 dB per layer now passes
    assert table["model_sqnr_db"] >= 3  # but not on every layer if the model as a whole would drop below


def test_the_whole_model_is_held_to_the_floor(fake_modes, tmp_path, monkeypatch):
    # ~17.7 dB per layer passes the 16.5 dB floor layer by layer, but three such layers in a row don't.
    borderline = FakeConfig({128: 0.3, 256: 0.3, 64: 0.3}, noise=0.13)
    monkeypatch.setitem(modes_mod.MODES, "borderline", Mode("borderline", "test", lambda info, dtype: borderline))
    model, x = fake_modes
    reference = model(*x)
    report = autoquant.apply(model, CPU, torch.float32, x, ctx(tmp_path, candidates=("borderline", "fastsmall")))
    table = report.extra["autoquant"]
    per_layer = [layer["candidates"]["borderline"]["sqnr_db"] for layer in table["layers"]]
    assert all(16.5 < db < 19 for db in per_layer)
    statuses = [layer["candidates"]["borderline"]["status"] for layer in table["layers"]]
    assert "demoted" in statuses and "whole model's SQNR" in " ".join(l["why"] for l in table["layers"])
    # A demoted layer takes its next more accurate candidate that still beats noquant by the margin:
    # fastsmall on layer a (0.5 ms); on b and c fastsmall is not 5% faster, so noquant.
    for layer in table["layers"]:
        if layer["candidates"]["borderline"]["status"] == "demoted":
            assert layer["choice"] == {"a": "fastsmall"}.get(layer["layer"], "noquant"), layer
    final = measure.accuracy(reference, model(*x)).sqnr_db
    assert final >= 16.5 and final == pytest.approx(table["model_sqnr_db"], abs=1e-6)


def test_copies_stream_as_many_weight_bytes_as_the_model():
    lin = nn.Linear(1024, 2816, bias=False)  # 11.5 MB in fp32
    assert autoquant.copies_for(lin, 6 * 1024 * 2816 * 4) == 6
    assert autoquant.copies_for(lin, 1) == 1
    assert autoquant.copies_for(lin, autoquant.STREAM_BYTES_MIN) == 1  # fits in cache: one layer is faithful
    assert autoquant.copies_for(nn.Linear(8, 8), 10**12) == autoquant.MAX_COPIES
    stack = autoquant.Copies(lin, 3)
    assert len(stack(torch.randn(1, 1024))) == 3
    assert stack.layers[0].weight.data_ptr() != stack.layers[1].weight.data_ptr()


def test_choose_is_a_pure_rule():
    times = {"noquant": 1.0, "x": 0.5, "y": 0.3, "z": 0.96}
    assert autoquant.choose(times, {"x": 40, "y": 10, "z": 50}, 16.5, 0.05)[0] == "x"
    assert autoquant.choose(times, {"x": 40, "y": 20, "z": 50}, 16.5, 0.05)[0] == "y"
    assert autoquant.choose(times, {"x": 1, "y": 1, "z": 50}, 16.5, 0.05)[0] == "noquant"  # z only 4% faster
    assert autoquant.choose(times, {"x": 1, "y": 1, "z": 50}, 16.5, 0.0)[0] == "z"
    assert autoquant.choose({"noquant": None, "x": 0.1}, {"x": 40}, 16.5, 0.05)[0] == "noquant"


def test_a_layer_the_forward_pass_never_calls_is_left_alone(fake_modes, tmp_path):
    model, x = fake_modes
    model.unused = TimedLinear(128, 128)
    report = autoquant.apply(model, CPU, torch.float32, x, ctx(tmp_path))
    assert "not called by one forward pass" in report.skipped_layers["unused"]
    assert type(model.unused) is TimedLinear and report.layers_total == 4 and report.layers_quantized == 2


def test_the_search_does_not_change_the_model(fake_modes, tmp_path):
    model, x = fake_modes
    autoquant.search(model, CPU, torch.float32, x, ctx(tmp_path))
    assert all(type(m) is TimedLinear for m in (model.a, model.b, model.c))


# ---- the cache ------------------------------------------------------------------------------------

def test_a_cache_hit_skips_the_timing(fake_modes, tmp_path, monkeypatch):
    model, x = fake_modes
    first = autoquant.search(model, CPU, torch.float32, x, ctx(tmp_path))
    assert first["cache"]["hits"] == 0 and first["cache"]["misses"] == 12  # 3 shapes x 4 candidates
    assert autoquant.cache_entries(tmp_path) == 12

    timed = []
    real = autoquant.per_layer.time_modules
    monkeypatch.setattr(autoquant.per_layer, "time_modules", lambda mods, *a: timed.append(list(mods)) or real(mods, *a))
    second = autoquant.search(model, CPU, torch.float32, x, ctx(tmp_path, margin=0.2))  # margin isn't in the key
    assert timed == [] and second["cache"]["hits"] == 12 and second["cache"]["misses"] == 0
    assert all(c.get("cached") for layer in second["layers"] for c in layer["candidates"].values())
    assert [r["choice"] for r in second["layers"]] == ["fastsmall", "fastbig", "noquant"]

    # a different dtype is a different key: timed again
    autoquant.search(model.to(torch.bfloat16), CPU, torch.bfloat16, (x[0].to(torch.bfloat16),), ctx(tmp_path))
    assert len(timed) == 3
    # so is the compile setting (checked on the key, without compiling in a unit test)
    assert autoquant.TimingCache(tmp_path).get({"compile": True}) is None


def test_identical_shapes_share_the_timing(monkeypatch, tmp_path):
    CLOCK.t = 0.0
    for name, cfg in FAKE_MODES.items():
        monkeypatch.setitem(modes_mod.MODES, name, Mode(name, "test mode", lambda info, dtype, cfg=cfg: cfg))
    model = nn.Sequential(TimedLinear(128, 128), TimedLinear(128, 128))
    result = autoquant.search(model, CPU, torch.float32, (torch.randn(1, 128),), ctx(tmp_path, candidates=("sloppy",)))
    assert result["cache"]["misses"] == 2  # noquant + sloppy, once for both layers
    s0, s1 = (layer["candidates"]["sloppy"]["sqnr_db"] for layer in result["layers"])
    assert s0 != s1  # but accuracy is each layer's own


def test_clear_cache_function_and_cli(fake_modes, tmp_path, capsys):
    model, x = fake_modes
    autoquant.search(model, CPU, torch.float32, x, ctx(tmp_path))
    assert autoquant.cache_entries(tmp_path) == 12
    assert main(["autoquant-cache", "info", "--cache-dir", str(tmp_path)]) == 0
    assert "12 stored timings" in capsys.readouterr().out
    assert main(["autoquant-cache", "clear", "--cache-dir", str(tmp_path)]) == 0
    assert "removed 12" in capsys.readouterr().out
    assert autoquant.cache_entries(tmp_path) == 0
    assert autoquant.clear_cache(tmp_path) == 0


def test_cache_location_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv(autoquant.CACHE_ENV, str(tmp_path / "here"))
    assert autoquant.cache_root() == tmp_path / "here"
    monkeypatch.delenv(autoquant.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert autoquant.cache_root() == tmp_path / "xdg" / "torchao_nb"


# ---- through the sweep, with real torchao modes -----------------------------------------------------------

def run(model, x, **kw):
    kw = {"policy": measure.FAST_POLICY, "compile": False, "progress": False, "isolate": False, **kw}
    return sweep(model=model, example_inputs=x, modes="autoquant", device="cpu", dtype="bfloat16", **kw)


def test_real_modes_through_the_sweep(two_linear):
    (row,) = run(two_linear, (torch.randn(4, 128),))  # the captured shape is the input's
    assert row.status == "ok", row.reason
    assert row.search_s > 0 and row.quantize_s >= row.search_s
    table = tables.decision_table(row)
    assert list(table["layer"]) == ["fc1", "fc2"]
    assert list(table["input_shape"]) == ["4x128", "4x256"]
    for mode in ["noquant", "int8dynamic", "int8weightonly", "int4weightonly", "float8weightonly"]:
        assert (table[f"{mode} ms"] > 0).all()
    assert (table["int8weightonly dB"] > 30).all() and (table["int4weightonly dB"] > 10).all()
    data = row.extra_dict["autoquant"]
    assert "float8dynamic" in data["unsupported"] and "CUDA" in data["unsupported"]["float8dynamic"]
    chosen = [c for c in table["choice"] if c != "noquant"]
    assert row.layers_quantized == len(chosen)
    # the whole model stays at or above the floor (∞ when nothing was quantized)
    assert row.sqnr_value >= autoquant.DEFAULT_SQNR_FLOOR_DB


def test_a_floor_rejecting_every_real_mode_leaves_the_row_ok_and_unquantized(two_linear):
    (row,) = run(two_linear, (torch.randn(1, 128),), autoquant={"sqnr_floor_db": 1000})
    assert row.status == "ok" and row.layers_quantized == 0 and row.layers_total == 2
    assert row.sqnr_db is None and row.cosine == pytest.approx(1.0)  # identical to the unquantized model
    assert set(tables.decision_table(row)["choice"]) == {"noquant"}
    assert "1000 dB" in row.extra_dict["layers_left_alone"]["fc1"]


def test_a_model_without_linear_gets_a_clear_message():
    with pytest.raises(UserError, match="no nn.Linear layer"):
        autoquant.apply(NoLinear(), CPU, torch.float32, (torch.randn(1, 4, 8),))
    (row,) = run(NoLinear(), (torch.randn(1, 4, 8),))
    assert row.status == "skipped" and "no nn.Linear layer" in row.reason


def test_progress_bar_only_when_asked(two_linear, capsys):
    run(two_linear, (torch.randn(1, 128),), progress=True, autoquant={"candidates": ["int8weightonly"]})
    assert "autoquant search" in capsys.readouterr().err
    run(two_linear, (torch.randn(1, 128),), progress=False, autoquant={"candidates": ["int8weightonly"]})
    assert "autoquant search" not in capsys.readouterr().err


@pytest.mark.parametrize("settings, message", [
    ({"margin": 1.5}, "margin is a fraction"),
    ({"sqnr_floor_db": "loud"}, "must be numbers"),
    ({"floor": 3}, "unknown autoquant setting(s) floor"),
    ({"candidates": ["int3"]}, "can't try mode 'int3'"),
    ({"candidates": ["autoquant"]}, "can't try mode 'autoquant'"),
    ("fast", "takes SearchSettings or a dict"),
])
def test_bad_settings_are_clear_errors_before_anything_runs(settings, message, two_linear):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run(two_linear, (torch.randn(1, 128),), autoquant=settings)


def test_cli_floor_flag(tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert main(["run", "--model", "llama-tiny", "--modes", "autoquant", "--device", "cpu", "--no-compile", "--quiet",
                 "--quick", "--autoquant-floor", "1000", "--out", str(out)]) == 0
    from torchao_nb.results import ResultSet

    (row,) = ResultSet.load(out)
    assert row.extra_dict["autoquant"]["sqnr_floor_db"] == 1000 and row.layers_quantized == 0
    assert row.search_s is not None  # survives the files


@pytest.mark.slow
def test_compiled_search_uses_the_runs_compile_setting(two_linear):
    (row,) = run(two_linear, (torch.randn(1, 128),), compile=True, autoquant={"candidates": ["int8weightonly"]})
    assert row.status == "ok", row.reason
    data = row.extra_dict["autoquant"]
    assert data["compile"] is True and data["cache"]["misses"] == 4  # 2 shapes x (noquant, int8weightonly)


# ---- the figure ---------------------------------------------------------------------------------------

def test_plot_choices(fake_modes, tmp_path):
    import matplotlib.pyplot as plt

    model, x = fake_modes
    (row,) = sweep(model=model, example_inputs=x, modes="autoquant", device="cpu", dtype="float32", compile=False,
                   progress=False, policy=measure.FAST_POLICY, clock=CLOCK, isolate=False,
                   autoquant={"candidates": list(FAKE_MODES), "cache_dir": str(tmp_path)})
    fig = plots.autoquant_choices(row)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["a\n→ fastsmall", "b\n→ fastbig", "c\n→ noquant"]
    outlined = [p for p in ax.patches if p.get_linewidth() == 2.0]
    assert len(outlined) == 3  # one chosen bar per layer
    assert sum(1 for p in ax.patches if p.get_hatch() == "//") == 3  # sloppy, below the floor, on each layer
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {"noquant", *FAKE_MODES, "chosen", "below floor"}
    plt.close(fig)
    with pytest.raises(ValueError, match="no autoquant decision table"):
        tables.decision_table([])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_chosen_int4_layer_gets_the_group_size_that_fits_it(dtype):
    """The search quantizes each candidate with its per-layer config; applying the choice must do the same: a
    192-wide layer (vit-tiny's) took group 128 and failed ("in_features=192 must be divisible by group_size=128")."""
    model = nn.Sequential(nn.Linear(192, 64), nn.Linear(256, 64)).to(dtype)
    applied = autoquant.apply_choices(model, {"0": "int4weightonly", "1": "int4weightonly"}, CPU, dtype)
    assert modes_mod.is_quantized(model[0]) and modes_mod.is_quantized(model[1])
    assert applied["0"] != applied["1"]  # two group sizes, each recorded with its layer
    assert '64' in str(applied["0"]) and '128' in str(applied["1"])
