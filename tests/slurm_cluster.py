"""A throwaway single-node SLURM cluster (munged, slurmctld, slurmd) under a temp folder, for tests/test_slurm.py.

Debian's `slurm-wlm` and `munge` (scripts/test.sh installs them) run here without systemd or cgroups: the
daemons run in the foreground as children of this process, on free ports, with a munge key, sockets, state,
spool and logs of their own under the folder, so nothing of the machine's own configuration is read or changed.

No slurmdbd (and so no MariaDB): submitit reads a job's end from its result file, and torchao_nb asks
`squeue --states=all` for a job's state in the cluster's words (PENDING, RUNNING, CANCELLED, TIMEOUT...), which
slurmctld answers for MinJobAge seconds after a job ends; `sacct`, which needs the accounting daemon, is only
the fallback for jobs ended longer ago. Without slurmdbd `sacct` fails here, and submitit's own watcher reads
every state as UNKNOWN, which is the case torchao_nb must (and here does) get right without it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sinfo", "sbatch", "squeue", "scancel", "srun")
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
START_TIMEOUT_S = 30.0
MEM_PER_CPU_MB = 1024
CRED_EXPIRE_S = 10  # a requeued job waits this long (+1 s) before it may start again: SLURM's default is 120  # so array tasks share the node's 2 CPUs instead of each taking all its memory


def missing_programs() -> list[str]:
    return [p for p in DAEMONS if shutil.which(p, path=SEARCH_PATH) is None]


def _free_ports(n: int) -> list[int]:
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def _node_memory_mb() -> int:
    total_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                    if line.startswith("MemTotal:"))
    return max(MEM_PER_CPU_MB * 2, total_kb // 1024 // 2)  # half the machine: slurmd refuses more than it has


def slurm_conf(folder: Path, host: str, ports: list[int]) -> str:
    return "\n".join([
        "ClusterName=torchao-nb-test",
        f"SlurmctldHost={host}(127.0.0.1)",
        f"SlurmctldPort={ports[0]}",
        f"SlurmdPort={ports[1]}",
        "SlurmUser=root", "SlurmdUser=root",
        "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={folder / 'munge.socket'},cred_expire={CRED_EXPIRE_S}",
        f"StateSaveLocation={folder / 'state'}", f"SlurmdSpoolDir={folder / 'spool'}",
        f"SlurmctldPidFile={folder / 'slurmctld.pid'}", f"SlurmdPidFile={folder / 'slurmd.pid'}",
        f"SlurmctldLogFile={folder / 'slurmctld.log'}", f"SlurmdLogFile={folder / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none", "JobCompType=jobcomp/none", "MpiDefault=none",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core_Memory", f"DefMemPerCPU={MEM_PER_CPU_MB}",
        "SchedulerParameters=batch_sched_delay=0",
        "ReturnToService=2", "InactiveLimit=0", "KillWait=5", "MinJobAge=600",
        f"NodeName={host} NodeAddr=127.0.0.1 CPUs=2 RealMemory={_node_memory_mb()} State=UNKNOWN",
        f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP",
        "",
    ])


@dataclass
class Cluster:
    folder: Path
    conf: Path
    env: dict  # os.environ plus SLURM_CONF (and the sbin folders on PATH)
    procs: dict  # daemon name -> Popen

    def sh(self, *argv: str, check: bool = True, timeout: float = 30) -> str:
        done = subprocess.run(list(argv), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode:
            raise AssertionError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def log_tails(self, lines: int = 15) -> str:
        parts = []
        for log in sorted(self.folder.glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {log.name}\n" + "\n".join(tail))
        return "\n".join(parts)

    def wait_idle(self, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline, state = time.monotonic() + timeout_s, ""
        while time.monotonic() < deadline:
            dead = [name for name, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} exited while the test cluster started:\n{self.log_tails()}")
            state = self.sh("sinfo", "-h", "-o", "%T", check=False).strip()
            if state == "idle":
                return
            time.sleep(0.2)
        raise RuntimeError(f"the test cluster's node is {state or 'not listed'!r}, not idle, after {timeout_s:.0f} s:\n"
                           f"{self.log_tails()}")

    def stop(self) -> None:
        """Every job cancelled, every daemon this cluster started stopped by its pid (SIGTERM, then SIGKILL after a
        few seconds), then whatever its jobs left: slurmstepd outlives slurmd, and a job step (srun, a sweep's
        worker) outlives slurmstepd, so they would run on into later tests."""
        if self.procs.get("slurmctld") is not None and self.procs["slurmctld"].poll() is None:
            self.sh("scancel", "--full", "--partition=debug", check=False)
            deadline = time.monotonic() + 15
            while self.sh("squeue", "-h", check=False).strip() and time.monotonic() < deadline:
                time.sleep(0.2)
        for p in reversed(list(self.procs.values())):
            if p.poll() is None:
                p.terminate()
        for p in reversed(list(self.procs.values())):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for pid in self.leftovers():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def leftovers(self) -> list[int]:
        """Processes still carrying this cluster's SLURM_CONF (slurmstepd and job steps inherit it)."""
        mark, found = f"SLURM_CONF={self.conf}".encode(), []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit() and int(proc.name) != os.getpid():
                with contextlib.suppress(OSError):
                    if mark in (proc / "environ").read_bytes().split(b"\0"):
                        found.append(int(proc.name))
        return found


def start(folder: Path) -> Cluster:
    """munged, slurmctld and slurmd for a one-node cluster under `folder`; raises with the logs' tails if it
    does not become idle. The caller stops it (Cluster.stop)."""
    folder.mkdir(parents=True, exist_ok=True)
    for sub in ("state", "spool"):
        (folder / sub).mkdir(exist_ok=True)
    env = {**os.environ, "PATH": SEARCH_PATH, "SLURM_CONF": str(folder / "slurm.conf")}
    host = socket.gethostname().split(".")[0]
    (folder / "slurm.conf").write_text(slurm_conf(folder, host, _free_ports(2)))
    key = folder / "munge.key"
    subprocess.run(["mungekey", "-c", "-k", str(key)], check=True, env=env, capture_output=True)
    key.chmod(0o600)
    cluster = Cluster(folder, folder / "slurm.conf", env, {})
    commands = {
        "munged": ["munged", "-F", "--force", f"--socket={folder / 'munge.socket'}", f"--key-file={key}",
                   f"--log-file={folder / 'munged.log'}", f"--pid-file={folder / 'munged.pid'}",
                   f"--seed-file={folder / 'munged.seed'}"],
        "slurmctld": ["slurmctld", "-D", "-i"],
        "slurmd": ["slurmd", "-D"],
    }
    try:
        for name, argv in commands.items():
            out = open(folder / f"{name}.stderr.log", "w")
            cluster.procs[name] = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
            out.close()
            if name == "munged":
                _wait_for(folder / "munge.socket", cluster)
        cluster.wait_idle()
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _wait_for(path: Path, cluster: Cluster) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not path.exists():
        if time.monotonic() > deadline or any(p.poll() is not None for p in cluster.procs.values()):
            raise RuntimeError(f"{path} did not appear:\n{cluster.log_tails()}")
        time.sleep(0.05)
