"""The compile cache a results folder carries: saved by one sweep, loaded by the next in a fresh worker, refused
when it was made for another torch, torchao or machine, and one line for a file that isn't one."""

import hashlib
import json
import re

import pytest
import torch

from torchao_nb import compile_cache, executors, measure, sweep
from torchao_nb.cli import main
from torchao_nb.errors import UserError
from torchao_nb.extras import CarriedCache, Extras

SMALL = dict(model="mlp", modes="noquant,int8dynamic", device="cpu", dtype="float32", policy=measure.FAST_POLICY,
             save_reload=False, progress=False, save_compile_cache=True)


def fresh_worker(monkeypatch, cache_dir):
    """The next sweep's worker starts now, with empty inductor caches: nothing it compiles can come from before."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(cache_dir))
    executors._stop_idle_workers()


def rewritten(path, **valid_for):
    """The cache at `path` as another machine or version would have saved it (its checksum still right)."""
    header, _, body = path.read_bytes()[len(compile_cache.MAGIC):].partition(b"\n")
    header = json.dumps(json.loads(header) | valid_for).encode()
    path.write_bytes(compile_cache.MAGIC + header + b"\n" + body)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A sweep with empty inductor caches, in a worker of its own: its results folder and its rows."""
    mp = pytest.MonkeyPatch()
    tmp = tmp_path_factory.mktemp("first")
    fresh_worker(mp, tmp / "inductor")
    try:
        rows = sweep(out=tmp / "out", **SMALL).rows
    finally:
        executors._stop_idle_workers()
        mp.undo()
    return tmp / "out", rows


def test_a_fresh_worker_compiles_from_the_carried_cache(saved, tmp_path, monkeypatch):
    out, cold = saved
    assert [r.status for r in cold] == ["ok", "ok"]
    assert all("miss" in r.fx_cache and "hit" not in r.fx_cache for r in cold)  # it really compiled cold
    found = compile_cache.read(out / compile_cache.FILE_NAME)
    assert found.mismatch("cpu") is None and found.valid_for["artifacts"]["inductor"] >= 3  # baseline + 2 cells

    fresh_worker(monkeypatch, tmp_path / "empty-inductor")
    try:
        rows = sweep(out=tmp_path / "out", compile_cache=out / compile_cache.FILE_NAME, **SMALL).rows
    finally:
        executors._stop_idle_workers()
    assert [r.status for r in rows] == ["ok", "ok"]
    for row in rows:  # the first call of each cell found its graphs in the carried cache
        assert "hit" in row.fx_cache and "miss" not in row.fx_cache, row.fx_cache
        note = Extras.parse(row.extra).of(CarriedCache)
        assert note is not None and note.compile_cache.startswith("loaded "), row.extra
        assert re.search(r"and [1-9]\d* C\+\+ kernel", note.compile_cache), note  # gcc has nothing to do
    assert compile_cache.read(tmp_path / "out" / compile_cache.FILE_NAME).valid_for["artifacts"]["inductor"] >= 3


@pytest.mark.parametrize("field, value", [("torch", "2.11.0+cu128"), ("device", "NVIDIA H100 80GB HBM3"),
                                          ("torchao", "0.15.0")])
def test_a_cache_from_another_version_or_machine_is_refused_in_one_line(saved, tmp_path, capsys, field, value):
    path = tmp_path / "elsewhere.bin"
    path.write_bytes((saved[0] / compile_cache.FILE_NAME).read_bytes())
    rewritten(path, **{field: value})
    with pytest.raises(UserError, match=re.escape(f"saved with {field} {value}; this is {field} ")) as e:
        sweep(compile_cache=path, **SMALL)
    assert "would not load here; leave out --compile-cache" in str(e.value) and "\n" not in str(e.value)
    assert main(["run", "--model", "mlp", "--device", "cpu", "--compile-cache", str(path), "--out",
                 str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and f"{field} {value}" in err and err.count("\n") == 1
    assert not (tmp_path / "out" / "rows.jsonl").exists()  # refused before anything ran


@pytest.mark.parametrize("damage, message", [
    (lambda data: data[: len(data) // 2], "is not a whole torchao_nb compile cache"),  # cut short
    (lambda data: b"\x80\x04 not ours" + data, "is not a whole torchao_nb compile cache"),
    (lambda data: data[:-1] + bytes([data[-1] ^ 1]), "is not a whole torchao_nb compile cache"),  # one bit
    (None, "does not exist"),
])
def test_a_corrupt_or_missing_file_is_one_line(saved, tmp_path, capsys, damage, message):
    path = tmp_path / "cache.bin"
    if damage is not None:
        path.write_bytes(damage((saved[0] / compile_cache.FILE_NAME).read_bytes()))
    with pytest.raises(UserError, match=message) as e:
        sweep(compile_cache=path, **SMALL)
    assert "\n" not in str(e.value)
    assert main(["run", "--model", "mlp", "--device", "cpu", "--compile-cache", str(path), "--out",
                 str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_a_cache_that_fails_in_the_worker_costs_cold_compiles_not_rows(tmp_path):
    """Checked before the sweep, changed after: the cells say so and compile cold."""
    path = tmp_path / "gone.bin"
    with pytest.warns(RuntimeWarning, match="compile cache not loaded, the cells compile cold"):
        note = compile_cache.load(str(path), "cpu")
    assert note.compile_cache.startswith("not loaded: ") and "does not exist" in note.compile_cache
    assert compile_cache.carried(str(path)) == note and compile_cache.carried(None) is None


def test_saves_of_one_process_merge_into_one_loadable_entry_per_kind():
    """torch appends each save_cache_artifacts() as another entry of a kind and its loader keeps only the last
    (torch 2.13): a merged blob keeps every artifact, once."""
    from torch.compiler._cache import CacheArtifactFactory, CacheArtifactManager, _serialize_single_cache
    from torch.utils._appending_byte_serializer import AppendingByteSerializer

    CacheArtifactManager._ensure_cache_artifacts_registered()
    art = lambda key: CacheArtifactFactory.create("inductor", key, key.encode() * 3)  # noqa: E731
    two_saves = AppendingByteSerializer(serialize_fn=_serialize_single_cache)
    two_saves.extend([("inductor", [art("a")]), ("inductor", [art("b")])])
    assert [a.key for a in CacheArtifactManager.deserialize(two_saves.to_bytes())["inductor"]] == ["b"]  # torch's

    another = AppendingByteSerializer(serialize_fn=_serialize_single_cache)
    another.extend([("inductor", [art("b"), art("c")])])
    blob, counts = compile_cache.merged(two_saves.to_bytes(), another.to_bytes())
    assert counts == {"inductor": 3}
    assert [a.key for a in CacheArtifactManager.deserialize(blob)["inductor"]] == ["a", "b", "c"]


def test_the_file_says_what_it_is_valid_for(saved):
    data = (saved[0] / compile_cache.FILE_NAME).read_bytes()
    assert data.startswith(compile_cache.MAGIC)
    header, _, body = data[len(compile_cache.MAGIC):].partition(b"\n")
    valid_for = json.loads(header)
    assert {k: valid_for[k] for k in compile_cache.VALID_FOR} == compile_cache.here("cpu")
    assert valid_for["sha256"] == hashlib.sha256(body).hexdigest()
    found = compile_cache.read(saved[0] / compile_cache.FILE_NAME)
    assert valid_for["artifacts"]["cpp_kernels"] == len(found.kernels) >= 1  # a CPU's compiled kernels travel too
    assert all(name.endswith(".so") and data[:4] == b"\x7fELF" for name, data in found.kernels)


def test_in_process_the_sweep_saves_its_cache_too_and_without_out_or_compile_nothing(tmp_path):
    sweep(out=tmp_path / "a", isolate=False, **(SMALL | dict(modes="noquant")))
    counts = compile_cache.read(tmp_path / "a" / compile_cache.FILE_NAME).valid_for["artifacts"]
    assert counts["inductor"] >= 1 and counts["cpp_kernels"] >= 1  # noquant compiles the graph of its baseline
    default = {k: v for k, v in SMALL.items() if k != "save_compile_cache"}  # saving is asked for, not the default
    sweep(out=tmp_path / "b", isolate=False, **(default | dict(modes="noquant")))
    sweep(out=tmp_path / "c", isolate=False, compile=False, **(SMALL | dict(modes="noquant")))
    assert not (tmp_path / "b" / compile_cache.FILE_NAME).exists()
    assert not (tmp_path / "c" / compile_cache.FILE_NAME).exists()


def test_autoquant_searches_compiles_travel_too(tmp_path, monkeypatch):
    """The search compiles its candidates in a child process: a sweep carrying the file must find them too."""
    from torchao_nb.extras import Autoquant

    from .conftest import TwoLinear

    torch.manual_seed(0)
    kw = SMALL | dict(model=TwoLinear(), example_inputs=(torch.randn(2, 128),), modes="autoquant")
    compiles = []
    for run, carried in (("a", None), ("b", tmp_path / "a" / compile_cache.FILE_NAME)):
        monkeypatch.setenv("TORCHAO_NB_CACHE_DIR", str(tmp_path / f"timings-{run}"))  # every candidate is timed
        fresh_worker(monkeypatch, tmp_path / f"inductor-{run}")
        try:
            (row,) = sweep(out=tmp_path / run, compile_cache=carried, **kw).rows
        finally:
            executors._stop_idle_workers()
        assert row.status == "ok", row.reason
        compiles.append(Extras.parse(row.extra).of(Autoquant).autoquant["compiles"])
    cold, warm = compiles
    assert cold["miss"] >= 2, cold  # the candidates' graphs, compiled cold (a few repeat within the search)
    assert warm == {"hit": cold["hit"] + cold["miss"], "miss": 0, "bypass": 0}, (cold, warm)  # all in the file
