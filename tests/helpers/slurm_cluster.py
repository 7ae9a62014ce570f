"""A real Slurm cluster on this machine, for tests: munged, slurmctld and two slurmd daemons (two "nodes").

    python tests/helpers/slurm_cluster.py /tmp/cluster        # start it, print the environment to use, wait for Ctrl-C

Needs root and Debian's slurmctld / slurmd / slurm-client / munge packages; `ensure_installed()` apt-installs them
when they are missing (or says why it cannot). Everything lives in one directory: munge key and socket, slurm.conf,
state, spool, logs and PID files. Daemons run in the foreground as child processes and are stopped by their PIDs,
never by name. Nodes are named by loopback addresses (127.0.0.1, 127.0.0.2) so that the first node's name is a
valid MASTER_ADDR. Facts this follows: ../shared/NOTES.md section 6.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
BINARIES = ["slurmctld", "slurmd", "sbatch", "munged", "mungekey"]


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None and not Path(f"/usr/sbin/{b}").exists()]


def ensure_installed() -> str | None:
    """None when Slurm and munge are usable, else the reason they are not (for pytest.skip)."""
    if not missing_binaries():
        return None
    if os.geteuid() != 0:
        return "Slurm is not installed and installing it needs root"
    if shutil.which("apt-get") is None:
        return "Slurm is not installed and there is no apt-get to install it"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    done = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES], env=env,
                          capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        update = subprocess.run(["apt-get", "update"], env=env, capture_output=True, text=True, timeout=900)
        done = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES], env=env,
                              capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            return f"apt-get install {' '.join(PACKAGES)} failed: {(update.stderr + done.stderr)[-500:]}"
    return None if not missing_binaries() else f"still missing after install: {missing_binaries()}"


def _free_ports(n: int) -> list[int]:
    """n consecutive free TCP ports (slurm.conf gives node ports as a range)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n > 65000:
            continue
        try:
            sockets = []
            for port in range(base, base + n):
                sock = socket.socket()
                sock.bind(("127.0.0.1", port))
                sockets.append(sock)
            for sock in sockets:
                sock.close()
            return list(range(base, base + n))
        except OSError:
            for sock in sockets:
                sock.close()
    raise RuntimeError("no free port range")


class LocalSlurmCluster:
    NODES = ["127.0.0.1", "127.0.0.2"]

    def __init__(self, root: str | os.PathLike, cpus_per_node: int = 1):
        self.root = Path(root).resolve()
        self.cpus = cpus_per_node
        self.processes: list[subprocess.Popen] = []

    @property
    def env(self) -> dict:
        """Environment for Slurm clients (sbatch, squeue, scontrol) talking to this cluster, without the rank
        variables of whatever process runs the tests (sbatch would export them into the job)."""
        env = {k: v for k, v in os.environ.items()
               if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
        return dict(env, SLURM_CONF=str(self.root / "slurm.conf"))

    def _start(self, name: str, command: list[str]):
        log = open(self.root / "logs" / f"{name}.out", "w")
        self.processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                               env=self.env, start_new_session=True))

    def start(self, timeout: float = 60):
        root = self.root
        for sub in ("munge", "state", "logs", "spool"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(root / "munge", 0o755)          # munged checks its socket folder's permissions
        key = root / "munge" / "munge.key"
        if not key.exists():
            subprocess.run(["mungekey", "-c", "-k", str(key)], check=True, capture_output=True)
        os.chmod(key, 0o600)
        socket_path = root / "munge" / "munge.socket"
        self._start("munged", ["munged", "-F", "--force", f"--socket={socket_path}", f"--key-file={key}",
                               f"--log-file={root / 'logs' / 'munged.log'}",
                               f"--pid-file={root / 'munge' / 'munged.pid'}",
                               f"--seed-file={root / 'munge' / 'munged.seed'}"])
        self._wait(lambda: socket_path.exists(), timeout, "munged did not create its socket")
        ctld_port, node_ports = _free_ports(1)[0], _free_ports(len(self.NODES))
        (root / "slurm.conf").write_text("\n".join([
            "ClusterName=megababel-test",
            "SlurmctldHost=localhost(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={socket_path}",
            "SlurmUser=root", "SlurmdUser=root",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU",
            "SchedulerParameters=batch_sched_delay=0", "MailProg=/bin/true",
            "JobRequeue=1", "ReturnToService=2", "MpiDefault=none", "KillWait=10",
            "SlurmctldTimeout=30", "SlurmdTimeout=30", "InactiveLimit=0", "MinJobAge=300",
            f"StateSaveLocation={root / 'state'}", f"SlurmdSpoolDir={root / 'spool'}/%n",
            f"SlurmctldPidFile={root / 'state' / 'slurmctld.pid'}", f"SlurmdPidFile={root / 'spool'}/slurmd-%n.pid",
            f"SlurmctldLogFile={root / 'logs' / 'slurmctld.log'}", f"SlurmdLogFile={root / 'logs'}/slurmd-%n.log",
            "JobCompType=jobcomp/none", "AccountingStorageType=accounting_storage/none",
            f"NodeName=127.0.0.[1-{len(self.NODES)}] NodeHostname=localhost NodeAddr=127.0.0.1 "
            f"Port=[{node_ports[0]}-{node_ports[-1]}] CPUs={self.cpus} RealMemory=1000 State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO", ""]))
        for node in self.NODES:
            (root / "spool" / node).mkdir(exist_ok=True)
        self._start("slurmctld", ["slurmctld", "-D", "-i", "-f", str(root / "slurm.conf")])
        self._wait(lambda: self._run(["scontrol", "ping"]).returncode == 0, timeout, "slurmctld does not answer")
        for node in self.NODES:
            self._start(f"slurmd-{node}", ["slurmd", "-D", "-N", node, "-f", str(root / "slurm.conf")])
        self._wait(lambda: self._idle_nodes() == len(self.NODES), timeout, "the slurmd nodes did not become idle")
        return self

    def _run(self, command: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=30)

    def _idle_nodes(self) -> int:
        out = self._run(["sinfo", "-h", "-N", "-o", "%N %t"]).stdout.split("\n")
        return sum(1 for line in out if line.strip().endswith("idle"))

    def _wait(self, ready, timeout: float, message: str):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(p.poll() is not None for p in self.processes):
                dead = [p.args[0] for p in self.processes if p.poll() is not None]
                raise RuntimeError(f"{message}: {dead} exited; logs in {self.root / 'logs'}\n{self.logs()}")
            if ready():
                return
            time.sleep(0.3)
        raise RuntimeError(f"{message} within {timeout} s; logs in {self.root / 'logs'}\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(f"--- {f.name}\n{f.read_text()[-1500:]}" for f in sorted((self.root / "logs").glob("*"))
                         if f.is_file())

    def sbatch(self, script: str | os.PathLike, options=(), args=(), cwd=None, env=None) -> int:
        """Submit `script` with sbatch `options`, passing it `args`; returns the job id."""
        done = subprocess.run(["sbatch", "--parsable", *options, str(script), *args], env=dict(self.env, **(env or {})),
                              capture_output=True, text=True, timeout=60, cwd=cwd)
        if done.returncode != 0:
            raise RuntimeError(f"sbatch failed: {done.stderr}")
        return int(done.stdout.strip().split(";")[0])

    def job_info(self, job: int) -> str:
        return self._run(["scontrol", "show", "job", str(job)]).stdout

    def job_state(self, job: int) -> str:
        out = self._run(["scontrol", "show", "job", str(job)]).stdout
        for field in out.split():
            if field.startswith("JobState="):
                return field.split("=", 1)[1]
        return "UNKNOWN"

    def wait_job(self, job: int, timeout: float, until=("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT",
                                                        "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED")) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            state = self.job_state(job)
            if state in until:
                return state
            time.sleep(1)
        raise TimeoutError(f"job {job} still {self.job_state(job)} after {timeout} s\n{self.logs()}")

    def stop(self):
        """Stop the daemons this object started, by PID (slurmd first, munged last)."""
        for p in reversed(self.processes):
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.kill(p.pid, signal.SIGKILL)
                    p.wait()
        self.processes.clear()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


if __name__ == "__main__":
    reason = ensure_installed()
    if reason:
        sys.exit(reason)
    cluster = LocalSlurmCluster(sys.argv[1] if len(sys.argv) > 1 else "/tmp/megababel-slurm").start()
    print(f"export SLURM_CONF={cluster.root / 'slurm.conf'}   # Ctrl-C stops the daemons", flush=True)
    try:
        signal.pause()
    finally:
        cluster.stop()
