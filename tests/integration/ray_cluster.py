"""A throw-away Ray cluster for the scale tests: a head and one worker node on loopback, CPU only, a small object
store, all in a private temp dir and HOME. Stopped by PID (the `ray start --block` parents, then anything still
running from that temp dir), never with `ray stop`, which would kill every Ray on the machine."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

OBJECT_STORE_BYTES = 80 * 1024 * 1024


def ray_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HOME=str(home),
        RAY_ENABLE_AUTO_CONNECT="0",
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONUNBUFFERED="1",
        RAY_DEDUP_LOGS="0",
    )
    return env


@dataclass
class RayCluster:
    temp: Path  # short: Ray's unix sockets live under it
    home: Path
    address: str = ""
    processes: list[subprocess.Popen] = field(default_factory=list)

    def start(self, port: int, worker_cpus: int = 1, head_cpus: int = 1) -> RayCluster:
        ray = str(Path(sys.executable).with_name("ray"))
        env = ray_env(self.home)
        self.address = f"127.0.0.1:{port}"
        common = ["--block", "--num-gpus=0", f"--object-store-memory={OBJECT_STORE_BYTES}", "--disable-usage-stats"]
        log = open(self.home / "ray-head.log", "ab")  # noqa: SIM115 - closed with the process
        self.processes.append(
            subprocess.Popen(
                [
                    ray,
                    "start",
                    "--head",
                    f"--port={port}",
                    "--node-ip-address=127.0.0.1",
                    f"--num-cpus={head_cpus}",
                    f"--temp-dir={self.temp}",
                    "--include-dashboard=false",
                    *common,
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        self._wait_for_start(self.home / "ray-head.log")
        if not worker_cpus:  # a head alone (the bench)
            return self
        log = open(self.home / "ray-worker.log", "ab")  # noqa: SIM115
        self.processes.append(
            subprocess.Popen(
                [
                    ray,
                    "start",
                    f"--address={self.address}",
                    "--node-ip-address=127.0.0.1",
                    f"--num-cpus={worker_cpus}",
                    *common,
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        self._wait_for_start(self.home / "ray-worker.log")
        return self

    def _wait_for_start(self, log: Path, timeout: float = 120) -> None:
        """`ray start --block` says "Ray runtime started" once its node has joined, then blocks."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(f"ray start exited with {process.returncode}: {self.logs()}")
            if "Ray runtime started" in log.read_text(errors="replace"):
                return
            time.sleep(0.2)  # polling a log the cluster writes once, not a test sleep
        raise RuntimeError(f"the Ray node did not start within {timeout} s: {self.logs()}")

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(self.home.glob("ray-*.log")))

    def give_token_to(self, home: Path) -> None:
        """Ray 2.60 authenticates with ~/.ray/auth_token: a daemon with another HOME needs the cluster's."""
        token = self.home / ".ray" / "auth_token"
        if token.exists():
            (home / ".ray").mkdir(parents=True, exist_ok=True)
            shutil.copy2(token, home / ".ray" / "auth_token")

    def replica_pids(self) -> dict[int, str]:
        import psutil

        found = {}
        for process in psutil.process_iter(["pid", "name", "cmdline"]):
            try:
                title = " ".join(process.info["cmdline"] or [])
            except (psutil.Error, TypeError):
                continue
            if title.startswith("ray::ServeReplica:"):
                found[process.info["pid"]] = title
        return found

    def stop(self) -> None:
        import psutil

        ours: set[int] = set()
        for process in self.processes:
            try:
                ours.update(c.pid for c in psutil.Process(process.pid).children(recursive=True))
            except psutil.Error:
                pass
        # `ray start --block` takes ~30 s to wind down on SIGTERM; its processes are ours to end by PID.
        for pid in ours:
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        # Whatever outlives its `ray start` (agents, workers): ours by ancestry or by our temp dir in the command line.
        for process in psutil.process_iter(["pid", "cmdline"]):
            try:
                if process.info["pid"] in ours or str(self.temp) in " ".join(process.info["cmdline"] or []):
                    process.kill()
            except psutil.Error:
                pass
        shutil.rmtree(self.temp, ignore_errors=True)


def new_cluster(home: Path) -> RayCluster:
    temp = Path(tempfile.mkdtemp(prefix="acer", dir="/tmp"))
    home.mkdir(parents=True, exist_ok=True)
    return RayCluster(temp, home)
