"""A compile cache that travels: torch's portable compile artifacts saved beside a sweep's results, and loaded again.

`torch.compiler.save_cache_artifacts()` hands back every FX graph, AOT-autograd entry and inductor kernel (C++ on a
CPU, Triton and autotune results on CUDA) this process compiled or found in its caches; `load_cache_artifacts()`
writes them into another process's empty caches, so its next compile of the same graph is a cache hit. On a CPU
the file also carries the compiled C++ kernel libraries (see _loaded_kernels). It is one line saying what it is,
one JSON line saying what it is valid for and where each part starts, then the parts:

    TORCHAO_NB_COMPILE_CACHE 1
    {"torch": "2.13.0+cpu", "torchao": "0.18.0", "python": "3.11", "device": "AMD EPYC 9B14", "sha256": ...}
    <torch.compiler.save_cache_artifacts() bytes><each kernel library>

torch keys each artifact by the graph, its inputs and the compiler's settings, never by the machine: a cache from
another torch, torchao, Python or device kind would miss or, worse, load kernels built for another machine, so it is
refused before anything runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from . import env as envmod
from ._torchao import torchao_version
from .errors import UserError
from .extras import CarriedCache
from .results import atomic_write

FILE_NAME = "compile-cache.bin"  # in the results folder
MAGIC = b"TORCHAO_NB_COMPILE_CACHE 1\n"
VALID_FOR = ("torch", "torchao", "python", "device")  # what must match for the kernels to load here
FIX = "leave out --compile-cache (compile_cache=) or use a cache saved on this kind of machine with these versions"


def here(device: str) -> dict[str, str]:
    """What a cache saved in this process is valid for: versions, and the device kind (CPU model or GPU name)."""
    import torch

    return {"torch": torch.__version__, "torchao": torchao_version() or "none",
            "python": ".".join(platform.python_version_tuple()[:2]), "device": envmod.device_info(device).name}


@dataclass(frozen=True)
class CacheFile:
    """A compile-cache file read and checked: what it says it is valid for, and torch's bytes."""

    path: Path
    valid_for: dict
    artifacts: bytes  # torch's save_cache_artifacts() bytes
    kernels: tuple[tuple[str, bytes], ...] = ()  # (path in the inductor cache dir, the compiled C++ library)

    def mismatch(self, device: str) -> str | None:
        """Why this cache can't be used on this machine, in one line; None when it can."""
        now = here(device)
        differ = [k for k in VALID_FOR if str(self.valid_for.get(k)) != now[k]]
        if not differ:
            return None
        then = ", ".join(f"{k} {self.valid_for.get(k)}" for k in differ)
        this = ", ".join(f"{k} {now[k]}" for k in differ)
        return f"{self.path} was saved with {then}; this is {this}: its kernels would not load here; {FIX}."


def read(path: str | os.PathLike) -> CacheFile:
    """The file at `path`, checked whole (header, JSON, checksum); a UserError of one line when it isn't one."""
    path = Path(path).expanduser()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"compile cache {path} does not exist; give the {FILE_NAME} a sweep saved in its results "
                        "folder, or leave out --compile-cache.") from None
    except OSError as e:
        raise UserError(f"compile cache {path} can't be read ({e.strerror}); {FIX}.") from None
    bad = UserError(f"{path} is not a whole torchao_nb compile cache (cut short or not one at all); {FIX}.")
    if not data.startswith(MAGIC):
        raise bad
    header, sep, body = data[len(MAGIC):].partition(b"\n")
    try:
        valid_for = json.loads(header)
    except ValueError:
        raise bad from None
    if not sep or not isinstance(valid_for, dict) or valid_for.get("sha256") != hashlib.sha256(body).hexdigest():
        raise bad
    end = at = valid_for.get("artifacts_bytes", len(body))
    kernels = []
    for name, size in valid_for.get("kernels", []):
        kernels.append((name, body[at:at + size]))
        at += size
    if at != len(body):
        raise bad
    return CacheFile(path, valid_for, body[:end], tuple(kernels))


def check(path: str | os.PathLike, device: str) -> str:
    """`path` as an absolute path when it holds a cache this machine can load; otherwise a UserError of one line."""
    found = read(path)
    why = found.mismatch(device)
    if why:
        raise UserError(why)
    return str(found.path.resolve())


# ---- torch's bytes: several saves of one process, or of two processes, made into one --------------------------

def _entries(artifacts: bytes) -> list:
    """(kind, [artifact]) as torch wrote them. Each save_cache_artifacts() of a process appends its new artifacts as
    another entry of the same kind, and torch's own loader keeps only the last entry of each kind (torch 2.13), so
    a blob saved after the second group would load only that group's graphs: files hold one entry per kind."""
    from torch.compiler._cache import CacheArtifactManager, _deserialize_single_cache
    from torch.utils._appending_byte_serializer import AppendingByteSerializer

    CacheArtifactManager._ensure_cache_artifacts_registered()
    return AppendingByteSerializer.to_list(artifacts, deserialize_fn=_deserialize_single_cache)


def merged(*blobs: bytes) -> tuple[bytes, dict[str, int]]:
    """One blob with every artifact of `blobs` once (by kind and key; a later one wins), and the count per kind."""
    from torch.compiler._cache import _serialize_single_cache
    from torch.utils._appending_byte_serializer import AppendingByteSerializer

    kinds: dict[str, dict[str, object]] = {}
    for blob in blobs:
        for kind, artifacts in _entries(blob):
            kinds.setdefault(kind, {}).update((a.key, a) for a in artifacts)
    out = AppendingByteSerializer(serialize_fn=_serialize_single_cache)
    out.extend((kind, list(by_key.values())) for kind, by_key in kinds.items())
    return out.to_bytes(), {kind: len(by_key) for kind, by_key in kinds.items()}


def _kernel_cache_dir() -> Path:
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return Path(cache_dir())


def _loaded_kernels() -> dict[str, bytes]:
    """The C++ kernels this process loaded, by their path in the inductor cache dir. torch's artifacts hold a graph's
    source, not its compiled library, so on a CPU a cache hit would still run the C++ compiler for every kernel;
    inductor skips that when the library is already at its path (named by a hash of its source and compile
    command), so the file carries the libraries too."""
    from torch._inductor.codecache import CppCodeCache

    classes, keys = [CppCodeCache], set()
    while classes:
        cls = classes.pop()
        classes += cls.__subclasses__()
        keys.update(cls.cache)
    root, out = _kernel_cache_dir(), {}
    for key in keys:
        for lib in (root / key[1:3]).glob(f"{key}*.so"):
            with contextlib.suppress(OSError):
                out[str(lib.relative_to(root))] = lib.read_bytes()
    return out


def _body(artifacts: bytes, kernels: dict[str, bytes]) -> tuple[bytes, dict]:
    """torch's bytes, then each kernel library; the header's index says where each starts."""
    index = {"artifacts_bytes": len(artifacts), "kernels": [[name, len(data)] for name, data in kernels.items()]}
    return artifacts + b"".join(kernels.values()), index


# ---- what a child process compiled (autoquant's candidates, timed in a sandbox) -------------------------------
# torch records artifacts per process: without these, a sweep that carries the file would find the cells' graphs
# but compile every candidate of autoquant's search cold again (on CUDA with torchao's tuning, seconds each).

_ADOPTED: list[bytes] = []  # torch's bytes from children, until this process saves
_ADOPTED_KERNELS: dict[str, bytes] = {}
_HANDED_BACK: set[str] = set()  # in a child: kernel libraries already handed back (the child serves many calls)


def hand_back() -> tuple[bytes | None, dict[str, bytes]]:
    """In a child process: torch's artifacts of what it compiled since the last call, and the kernel libraries it
    has not handed back yet, for the process that saves the file (`adopt`)."""
    import torch

    got = torch.compiler.save_cache_artifacts()  # only what is new since the last one
    kernels = {name: data for name, data in _loaded_kernels().items() if name not in _HANDED_BACK}
    _HANDED_BACK.update(kernels)
    return (got[0] if got else None), kernels


def adopt(handed: tuple[bytes | None, dict[str, bytes]]) -> None:
    """A child's `hand_back`, kept to be saved with this process's own artifacts."""
    artifacts, kernels = handed
    if artifacts:
        _ADOPTED.append(artifacts)
    _ADOPTED_KERNELS.update(kernels)


def save(path: str | os.PathLike, device: str) -> dict[str, int] | None:
    """Write what this process and its children compiled (merged with a valid cache already at `path`: a worker that
    replaced a crashed one must not drop the graphs of its predecessor); the count per kind, None when nothing was
    compiled."""
    import torch

    got = torch.compiler.save_cache_artifacts()
    mine = [got[0]] if got else []
    if not mine and not _ADOPTED:
        return None
    path = Path(path)
    earlier, kernels = b"", {}
    with contextlib.suppress(UserError):
        old = read(path)
        if not old.mismatch(device):
            earlier, kernels = old.artifacts, dict(old.kernels)
    artifacts, counts = merged(*(b for b in (earlier, *mine, *_ADOPTED) if b))
    kernels |= _ADOPTED_KERNELS | _loaded_kernels()
    body, index = _body(artifacts, kernels)
    counts["cpp_kernels"] = len(kernels)
    valid_for = here(device) | {"artifacts": counts, "sha256": hashlib.sha256(body).hexdigest()} | index
    atomic_write(path, MAGIC + json.dumps(valid_for).encode() + b"\n" + body)
    _ADOPTED.clear()  # in the file now, as torch forgets what it serialized
    _ADOPTED_KERNELS.clear()
    return counts


def _put_kernels(kernels: tuple[tuple[str, bytes], ...]) -> None:
    """Each carried kernel library where inductor looks for it, unless one is there already."""
    root = _kernel_cache_dir()
    for name, data in kernels:
        target = root / name
        if not target.exists() and not Path(name).is_absolute() and ".." not in Path(name).parts:
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(target, data)


# ---- in the process that compiles the cells --------------------------------------------------------------------

_LOADED: dict[str, CarriedCache] = {}  # path → what loading it did, once per process (its caches stay filled)


def load(path: str, device: str) -> CarriedCache:
    """Fill this process's inductor caches from `path`, once; what happened, for the rows. Never raises: the sweep
    checked the file before it started, and a cache that fails now only costs cold compiles."""
    if path not in _LOADED:
        import torch

        try:
            found = read(path)
            why = found.mismatch(device)
            info = None if why else torch.compiler.load_cache_artifacts(found.artifacts)
            if info is not None:
                _put_kernels(found.kernels)
            if why is None and info is None:
                why = f"{path}: torch could not read its artifacts; {FIX}"
        except (UserError, OSError) as e:  # OSError: the inductor cache folder can't take the kernels
            why, info = str(e), None
        if why:
            warnings.warn(f"compile cache not loaded, the cells compile cold: {why}", RuntimeWarning, stacklevel=2)
            _LOADED[path] = CarriedCache(compile_cache=f"not loaded: {why}")
        else:
            n, k = len(info.inductor_artifacts), len(found.kernels)
            _LOADED[path] = CarriedCache(compile_cache=f"loaded {n} inductor graph(s) and {k} C++ kernel(s) from {path}")
    return _LOADED[path]


def carried(path: str | None) -> CarriedCache | None:
    """A row's note on the carried cache its cell compiled with; None when the sweep carried none."""
    return _LOADED.get(path) if path else None


@contextlib.contextmanager
def around_group(cfg) -> Iterator[None]:
    """Load the carried cache before a group's first compile; save this process's artifacts after the group."""
    if cfg.compile.enabled and cfg.compile_cache:
        load(cfg.compile_cache, cfg.device)
    try:
        yield
    finally:
        if cfg.compile.enabled and cfg.compile_cache_to:
            try:
                save(cfg.compile_cache_to, cfg.device)
            except Exception as e:  # the rows are what the sweep is for: a cache that can't be written costs a warning
                warnings.warn(f"the compile cache was not saved to {cfg.compile_cache_to}: {e}", RuntimeWarning,
                              stacklevel=2)
