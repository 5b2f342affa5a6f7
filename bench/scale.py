"""Scale bench: jobs per minute with 1 and 2 Ray Serve engine replicas, and the daemon's added latency per job with
Ray vs without, on the tiny model, in one run.

    python bench/scale.py [--jobs 24] [--steps 12] [--size 192] [--latency-jobs 15]

Starts a throw-away local Ray cluster (head on loopback, CPU only, small object store, its own temp dir and HOME,
stopped by PID; never `ray stop`), then in turn: `serve --demo` without Ray, `serve --demo --ray ADDR --replicas 1`
and `--replicas 2`. For each, two clients submit `--jobs` inpaint jobs in all (`--steps` steps at `--size` px,
fixed seeds) and the bench times first submit -> last `done` (jobs per minute). Latency: one client runs
`--latency-jobs` one-step 32x32 jobs one after another; the median submit -> `done` time, Ray minus plain, is what
the daemon + Serve add per job (handle call, streaming, object store, the replica's thread hop).

Be honest about the machine: a replica is one torch thread (Ray sets OMP_NUM_THREADS to the replica's num_cpus);
the plain daemon's engine uses every core. On 2 cores two replicas can at best double one replica, and the plain
daemon may beat one replica outright. Numbers in docs/scaling.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "shared"), str(REPO / "tests"), str(REPO / "tests" / "integration")]

from ace_protocol.client import BridgeClient, new_client_id  # noqa: E402
from daemon_fixture import free_port, start_process_daemon  # noqa: E402
from pictures import ellipse_mask, gradient_image, gray_payload, rgba_payload  # noqa: E402
from ray_cluster import new_cluster  # noqa: E402


def run_jobs(daemon, jobs: int, steps: int, size: int, clients: int = 2) -> float:
    """Seconds from the first submit to the last `done`, `jobs` spread over `clients` clients."""
    image, mask = rgba_payload(gradient_image(size, size)), gray_payload(ellipse_mask(size, size))
    connections = [
        BridgeClient(daemon.url, daemon.token, client_id=new_client_id("bench"), reconnect_timeout=0)
        for _ in range(clients)
    ]
    for client in connections:
        client.connect()
    errors: list[str] = []
    try:
        started = time.monotonic()
        handles = [
            connections[n % clients].submit(
                "inpaint", "a red hat", image=image, mask=mask, params={"seed": n, "steps": steps}
            )
            for n in range(jobs)
        ]

        def follow(handle) -> None:
            last = list(handle.events(timeout=600))[-1]
            if last.TYPE != "done":
                errors.append(f"{last.TYPE}: {getattr(last, 'message', '')}")

        threads = [threading.Thread(target=follow, args=(h,)) for h in handles]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
    finally:
        for client in connections:
            client.close()
    if errors:
        raise SystemExit(f"jobs failed: {errors[:3]}")
    return elapsed


def latency(daemon, jobs: int) -> float:
    """Median seconds submit -> done of one-step 32x32 jobs run one after another (after one warm-up job)."""
    image, mask = rgba_payload(gradient_image(32, 32)), gray_payload(ellipse_mask(32, 32))
    times = []
    with BridgeClient(daemon.url, daemon.token, client_id=new_client_id("bench-latency"), reconnect_timeout=0) as c:
        for n in range(jobs + 1):
            started = time.monotonic()
            events = list(
                c.submit("inpaint", "x", image=image, mask=mask, params={"seed": n, "steps": 1}).events(timeout=300)
            )
            assert events[-1].TYPE == "done", events[-1]
            if n:  # the first loads the model
                times.append(time.monotonic() - started)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=24)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--latency-jobs", type=int, default=15)
    args = parser.parse_args()
    from bridge_server.engine.tiny import build_tiny_model

    work = Path(tempfile.mkdtemp(prefix="ace-scale-bench-"))
    tiny = work / "tiny"
    build_tiny_model(tiny)
    cluster = new_cluster(work / "ray-home")
    rows: list[tuple[str, float, float]] = []
    try:
        began = time.monotonic()
        cluster.start(free_port(), head_cpus=2, worker_cpus=0)  # one node: both replicas on this machine's 2 cores
        print(f"local Ray head up in {time.monotonic() - began:.1f} s", flush=True)
        for n, (label, extra, threads) in enumerate(
            (
                ("no ray, all cores", (), None),
                ("no ray, 1 torch thread", (), "1"),
                ("ray, 1 replica", ("--ray", cluster.address, "--replicas", "1"), None),
                ("ray, 2 replicas", ("--ray", cluster.address, "--replicas", "2"), None),
            )
        ):
            home = work / f"daemon-{n}"
            home.mkdir()
            cluster.give_token_to(home)
            began = time.monotonic()
            saved = os.environ.get("OMP_NUM_THREADS")
            if threads:  # what a replica gets from Ray (OMP_NUM_THREADS = its num_cpus): the like-for-like baseline
                os.environ["OMP_NUM_THREADS"] = threads
            try:
                daemon = start_process_daemon(home, *extra, tiny_root=tiny, timeout=300)
            finally:
                if saved is None:
                    os.environ.pop("OMP_NUM_THREADS", None)
                else:
                    os.environ["OMP_NUM_THREADS"] = saved
            ready = time.monotonic() - began
            try:
                run_jobs(daemon, 2, args.steps, args.size)  # warm: model loaded on every replica
                elapsed = run_jobs(daemon, args.jobs, args.steps, args.size)
                median = latency(daemon, args.latency_jobs)
            finally:
                daemon.stop()
            per_minute = args.jobs / elapsed * 60
            rows.append((label, per_minute, median))
            print(
                f"{label:24} ready {ready:5.1f} s  {per_minute:6.1f} jobs/min  ({args.jobs} jobs, {args.steps} "
                f"steps, {args.size}px, in {elapsed:.1f} s)  latency p50 {median * 1000:.0f} ms/job",
                flush=True,
            )
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    plain, single, one, two = rows
    print(f"\n2 replicas / 1 replica: {two[1] / one[1]:.2f}x jobs per minute (2 cores: 2x is the ceiling)")
    print(f"2 replicas / no ray:     {two[1] / plain[1]:.2f}x (all cores), {two[1] / single[1]:.2f}x (1 thread)")
    print(
        f"added latency per job with Ray: {(one[2] - single[2]) * 1000:+.0f} ms against the 1-thread daemon "
        f"({single[2] * 1000:.0f} ms without Ray), {(one[2] - plain[2]) * 1000:+.0f} ms against all cores "
        "(1-step 32x32 job, median)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
