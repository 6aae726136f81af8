"""What machine we run on: device resolution, default dtype, and environment metadata."""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ._torchao import torchao_version
from .errors import UserError  # noqa: F401  (re-exported: torchao_nb.env.UserError)

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
_DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}


@dataclass(frozen=True)
class DeviceInfo:
    """What a mode needs to know to decide whether it can run."""

    type: str  # "cpu" or "cuda"
    name: str
    capability: tuple[int, int] | None = None  # CUDA compute capability
    bf16_native: bool = False  # CPU: has native bf16 matmul (AVX512-BF16 / AMX)

    @property
    def is_cuda(self) -> bool:
        return self.type == "cuda"


def cuda_available() -> bool:
    return torch.cuda.is_available()


DEVICES = ("auto", "cpu", "cuda")  # what --device, sweep(device=), the panel and a plan take


def device_name(device: str | None) -> str:
    """One of DEVICES (lower-cased; None is auto), without asking torch what this machine has."""
    name = (device or "auto").lower()
    if name not in DEVICES:
        raise UserError(f"unknown device {name!r}; choose one of: {', '.join(DEVICES)}.")
    return name


def resolve_device(device: str | None) -> str:
    """'auto' → cuda when a GPU is usable, else cpu; 'cuda' without a GPU is a UserError."""
    device = device_name(device)
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device == "cuda" and not cuda_available():
        raise UserError("--device cuda was asked for, but torch sees no CUDA GPU here; use --device cpu or auto.")
    return device


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_has_native_bf16() -> bool:
    with contextlib.suppress(Exception):
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def _size_bytes(text: str) -> int:
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    text = text.strip()
    return int(text[:-1]) * units[text[-1]] if text and text[-1] in units else int(text)


def cache_bytes(device: str) -> int | None:
    """The cache a model's weights could stay in between calls: a GPU's L2, a CPU's last level (sysfs)."""
    if device == "cuda":
        return int(torch.cuda.get_device_properties(0).L2_cache_size) or None
    best: tuple[int, int] | None = None
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            if (index / "type").read_text().strip() == "Instruction":
                continue
            level, size = int((index / "level").read_text()), _size_bytes((index / "size").read_text())
            best = max(best or (level, size), (level, size))
    return None if best is None else best[1]


def free_memory_bytes(device: str) -> int | None:
    """Memory a new allocation can take now: CUDA's free device memory, else MemAvailable; None when unknown."""
    if device == "cuda":
        return int(torch.cuda.mem_get_info()[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def device_info(device: str) -> DeviceInfo:
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        return DeviceInfo("cuda", props.name, (props.major, props.minor))
    return DeviceInfo("cpu", cpu_model(), None, cpu_has_native_bf16())


def default_dtype(info: DeviceInfo) -> torch.dtype:
    """bf16 on CUDA (as the seed requires); on CPU bf16 only where the CPU computes it natively."""
    if info.is_cuda or info.bf16_native:
        return torch.bfloat16
    return torch.float32


def resolve_dtype(dtype: str | torch.dtype | None, info: DeviceInfo) -> torch.dtype:
    if dtype is None or dtype == "auto":
        return default_dtype(info)
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise UserError(f"dtype {dtype} is not supported; choose one of: {', '.join(DTYPES)}.")
        return dtype
    name = _DTYPE_ALIASES.get(str(dtype).lower(), str(dtype).lower())
    if name not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; choose one of: auto, {', '.join(DTYPES)}.")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _nvidia_driver() -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        )
        return out.stdout.strip().splitlines()[0]
    return None


@functools.lru_cache(maxsize=1)
def collect_env_text() -> str:
    """torch.utils.collect_env's report (what PyTorch's bug template asks for). It shells out to
    pip, lscpu and nvidia-smi (about 1 s here), so a process computes it once."""
    try:
        from torch.utils import collect_env

        return collect_env.get_pretty_env_info()
    except Exception as e:  # a report about the machine must never stop a sweep
        return f"unavailable: {type(e).__name__}: {e}"


def huge_pages() -> str:
    """What this process's torch allocations sit on, for environment.json."""
    asked = os.environ.get("THP_MEM_ALLOC_ENABLE") == "1"
    try:
        mode = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().split("[")[1].split("]")[0]
    except (OSError, IndexError):
        return "unknown: this system says nothing of transparent huge pages"
    if mode == "never":
        return "4 KiB pages: transparent huge pages are off on this system"
    if asked or mode == "always":
        return f"transparent huge pages (system: {mode}; torch asks for them: {'yes' if asked else 'no'})"
    return f"4 KiB pages (system: {mode}, and THP_MEM_ALLOC_ENABLE is not 1)"


def environment(device: str, dtype: torch.dtype, threads: int) -> dict:
    """Everything a reader needs to know to trust or reproduce a result."""
    info = device_info(device)
    env = {
        "torch": torch.__version__,
        "torchao": torchao_version(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        "device_name": info.name,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "dtype": dtype_name(dtype),
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cache_bytes": cache_bytes(device),
        "memory_pages": huge_pages(),
        "cuda": torch.version.cuda,
        "cuda_driver": None,
        "compute_capability": None,
    }
    if info.is_cuda:
        env["cuda_driver"] = _nvidia_driver()
        env["compute_capability"] = ".".join(map(str, info.capability))
    return env


# ---- what else the machine is doing ---------------------------------------------------------------

def _cpu_busy_s() -> float | None:
    """Seconds of CPU time every process on the machine has used (user + nice + system), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
        return (int(fields[0]) + int(fields[1]) + int(fields[2])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class OtherLoad:
    """How much of the machine's CPU other processes used during the block: `cores` (e.g. 0.9 of a core) and
    `share` (of the cores this process may use). None where /proc/stat is not there (not Linux)."""

    def __enter__(self):
        self._t0, self._all0 = time.monotonic(), _cpu_busy_s()
        self._mine0 = _own_cpu_s()
        self.cores = self.share = None
        return self

    def __exit__(self, *exc):
        all1, wall = _cpu_busy_s(), time.monotonic() - self._t0
        if all1 is not None and self._all0 is not None and wall > 0:
            self.cores = max(0.0, (all1 - self._all0) - (_own_cpu_s() - self._mine0)) / wall
            self.share = self.cores / max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
        return False


def _own_cpu_s() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


BUSY_SHARE = 0.2  # other processes using more than this share of our cores while a cell is timed: said in its note
