"""Load test: many clients on loopback against one daemon on the tiny model, with random cancels and reconnects.

    python bench/load.py [--clients 16] [--jobs 50] [--seed 1] [--cancel 0.1] [--disconnect 0.1] [--window 4]

Starts `ace-bridge serve --demo` as a subprocess with a throw-away HOME (so its RSS can be read from /proc), runs
`--clients` asyncio clients that each submit `--jobs` jobs (steps 1; 64x64 generate or 32x32 inpaint, at random),
keeping at most `--window` unfinished jobs each. After each accepted job a client cancels it with probability
`--cancel`, and drops its connection and resumes its session with probability `--disconnect`. Everything random
comes from `--seed`, so a failing run can be replayed.

Checks (exit 1 on any failure): every accepted job ends at its client as exactly one of result / cancelled / failed
(none twice, none lost, no events for unknown jobs); no submit is refused; and, from the daemon's own journal, jobs
of one client start in order and no client with a waiting job sees another client start twice (round robin).
Prints jobs/s, p50/p99 of submit -> first progress event, and the daemon's RSS before and after.

`run_load()` and `check_fairness()` are also used by tests/adversarial/test_load.py with a shorter run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "shared")]

import aiohttp  # noqa: E402
import numpy as np  # noqa: E402
from ace_protocol.auth import AUTH_VERSION, new_nonce, proof_matches, token_id  # noqa: E402
from ace_protocol.auth import proof as auth_proof  # noqa: E402
from ace_protocol.codec import decode_server_message, encode  # noqa: E402
from ace_protocol.images import ImagePayload  # noqa: E402
from ace_protocol.messages import Ack, Cancel, Challenge, Hello, Prove, Submit  # noqa: E402

TERMINAL = ("done", "cancelled", "failed")


@dataclass
class JobRecord:
    client: int
    index: int
    request_id: str
    task: str
    submitted: float
    job_id: str | None = None
    accepted: float | None = None  # when `accepted` arrived (submit -> accepted latency)
    first_progress: float | None = None
    results: int = 0
    outcomes: list[str] = field(default_factory=list)
    refused: str | None = None
    cancel_sent: bool = False


@dataclass
class LoadReport:
    records: list[JobRecord]
    problems: list[str]
    reconnects: int
    cancels_sent: int
    elapsed_s: float
    received: Counter = field(default_factory=Counter)

    def outcome_counts(self) -> Counter:
        return Counter(r.outcomes[0] if len(r.outcomes) == 1 else "bad" for r in self.records if r.job_id)

    def accepted_p99_by_client(self) -> dict[int, float]:
        """Each client's p99 of submit -> accepted, in seconds."""
        waits: dict[int, list[float]] = {}
        for r in self.records:
            if r.accepted is not None:
                waits.setdefault(r.client, []).append(r.accepted - r.submitted)
        return {client: percentile(values, 99) for client, values in sorted(waits.items())}

    def first_progress_latencies(self) -> list[float]:
        return sorted(r.first_progress - r.submitted for r in self.records if r.first_progress is not None)


def _payloads(rng: random.Random) -> tuple[str, dict[str, Any]]:
    if rng.random() < 0.5:
        return "generate", {"params": {"steps": 1, "width": 64, "height": 64, "seed": rng.randrange(2**31)}}
    image = np.empty((32, 32, 4), np.uint8)
    image[..., :3] = rng.randrange(256)
    image[..., 3] = 255
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 255
    return "inpaint", {
        "image": ImagePayload(32, 32, "rgba8", image.tobytes()),
        "mask": ImagePayload(32, 32, "gray8", mask.tobytes()),
        "params": {"steps": 1, "seed": rng.randrange(2**31)},
    }


async def prove_handshake(ws: aiohttp.ClientWebSocketResponse, token: str, client_id: str, **extra: Any) -> Any:
    """Protocol 2 (docs/protocol.md §4): hello, check the daemon's proof, send ours; returns the daemon's answer."""
    hello = Hello(
        client_id=client_id,
        client_name="bench-load",
        client_version="0",
        protocol_versions=[AUTH_VERSION],
        nonce=new_nonce(),
        token_id=token_id(token),
        **extra,
    )
    await ws.send_bytes(encode(hello))
    reply = decode_server_message(await ws.receive_bytes(timeout=60))
    if not isinstance(reply, Challenge):
        return reply
    if not proof_matches(reply.proof, token, "server", str(hello.nonce), reply.nonce):
        raise RuntimeError(f"{client_id}: the daemon did not prove it holds the token")
    await ws.send_bytes(encode(Prove(proof=auth_proof(token, "client", str(hello.nonce), reply.nonce))))
    return decode_server_message(await ws.receive_bytes(timeout=60))


class LoadClient:
    def __init__(
        self,
        url: str,
        token: str,
        index: int,
        jobs: int,
        rng: random.Random,
        cancel_p: float,
        disconnect_p: float,
        window: int,
        run_tag: str = "",
    ) -> None:
        self.url, self.token, self.index = url, token, index
        self.client_id = f"load-client-{index:02d}-{run_tag}"  # a client_id is its first holder's (client_secret)
        self.jobs, self.rng, self.cancel_p, self.disconnect_p, self.window = jobs, rng, cancel_p, disconnect_p, window
        self.records: list[JobRecord] = []
        self.by_job: dict[str, JobRecord] = {}
        self.by_request: dict[str, JobRecord] = {}
        self.problems: list[str] = []
        self.session_id: str | None = None
        self.client_secret: str | None = None  # welcome.client_secret of this client_id: needed to resume it
        self.reconnects = 0
        self.cancels = 0
        self.received: Counter = Counter()  # message types this client was sent

    async def _connect(self, http: aiohttp.ClientSession) -> aiohttp.ClientWebSocketResponse:
        ws = await http.ws_connect(self.url, max_msg_size=0, compress=0, autoping=True)
        welcome = await prove_handshake(
            ws, self.token, self.client_id, session=self.session_id, client_secret=self.client_secret
        )
        if welcome.TYPE != "welcome":
            raise RuntimeError(f"client {self.index}: handshake refused: {welcome}")
        if self.session_id is not None and welcome.session != self.session_id:
            self.problems.append(f"client {self.index}: session not resumed")
        self.session_id = welcome.session
        self.client_secret = welcome.client_secret or self.client_secret
        return ws

    def _open(self) -> int:
        return sum(1 for r in self.records if r.refused is None and not r.outcomes)

    async def run(self, http: aiohttp.ClientSession) -> None:
        ws = await self._connect(http)
        submitted = 0
        try:
            while submitted < self.jobs or self._open():
                while submitted < self.jobs and self._open() < self.window:
                    task, kwargs = _payloads(self.rng)
                    record = JobRecord(self.index, submitted, f"c{self.index}-j{submitted}", task, time.monotonic())
                    self.records.append(record)
                    self.by_request[record.request_id] = record
                    await ws.send_bytes(encode(Submit(id=record.request_id, task=task, prompt="load", **kwargs)))
                    submitted += 1
                frame = await ws.receive(timeout=300)
                if frame.type != aiohttp.WSMsgType.BINARY:
                    raise RuntimeError(f"client {self.index}: connection lost: {frame.type} {frame.data}")
                message = decode_server_message(frame.data)
                if await self._handle(ws, message) and self.rng.random() < self.disconnect_p:
                    await ws.close()
                    self.reconnects += 1
                    ws = await self._connect(http)
        finally:
            await ws.close()

    async def _handle(self, ws: aiohttp.ClientWebSocketResponse, message: Any) -> bool:
        """Returns True after an `accepted` when no other submit awaits its answer (a safe moment to drop)."""
        kind = message.TYPE
        now = time.monotonic()
        self.received[kind] += 1
        if kind == "accepted":
            record = self.by_request[message.id]
            record.job_id, record.accepted = message.job_id, now
            self.by_job[message.job_id] = record
            if self.rng.random() < self.cancel_p:
                record.cancel_sent = True
                self.cancels += 1
                await ws.send_bytes(encode(Cancel(job_id=message.job_id)))
            return not any(r.job_id is None and r.refused is None for r in self.records)
        if kind in ("failed", "error") and getattr(message, "job_id", None) is None:
            request_id = getattr(message, "id", None)
            if request_id in self.by_request:
                self.by_request[request_id].refused = f"{message.code}: {message.message}"
                self.problems.append(f"client {self.index}: submit refused: {message.code}: {message.message}")
            elif not (
                kind == "error" and message.code == "bad_request" and "no queued or running job" in message.message
            ):
                self.problems.append(f"client {self.index}: unexpected {message}")  # late cancels are fine
            return False
        job_id = getattr(message, "job_id", None)
        if job_id is None:
            return False
        record = self.by_job.get(job_id)
        if record is None:
            self.problems.append(f"client {self.index}: event {kind} for a job it never submitted")
            return False
        if record.outcomes:
            if kind != "queued":
                self.problems.append(f"client {self.index}: {kind} after the end of job {record.index}")
            return False
        if kind == "progress" and record.first_progress is None:
            record.first_progress = now
        elif kind == "result":
            record.results += 1
        elif kind in TERMINAL:
            if kind == "done" and record.results == 0:
                self.problems.append(f"client {self.index}: job {record.index} done without a result")
            record.outcomes.append({"done": "result"}.get(kind, kind))
            if kind == "failed":
                self.problems.append(
                    f"client {self.index}: job {record.index} failed: {message.code}: {message.message}"
                )
            await ws.send_bytes(encode(Ack(job_ids=[job_id])))
        return False


async def run_load(
    url: str,
    token: str,
    *,
    clients: int,
    jobs: int,
    seed: int,
    cancel_p: float = 0.1,
    disconnect_p: float = 0.1,
    window: int = 4,
) -> LoadReport:
    master = random.Random(seed)
    run_tag = secrets.token_hex(3)  # each run its own client_ids: the warm-up's are not resumable without their secret
    workers = [
        LoadClient(url, token, i, jobs, random.Random(master.randrange(2**62)), cancel_p, disconnect_p, window, run_tag)
        for i in range(clients)
    ]
    started = time.monotonic()
    async with aiohttp.ClientSession() as http:
        outcomes = await asyncio.gather(*(w.run(http) for w in workers), return_exceptions=True)
    elapsed = time.monotonic() - started
    problems = [f"client {i}: {type(o).__name__}: {o}" for i, o in enumerate(outcomes) if isinstance(o, BaseException)]
    records = [r for w in workers for r in w.records]
    for w in workers:
        problems += w.problems
    for r in records:
        if r.refused is None and len(r.outcomes) != 1:
            problems.append(f"client {r.client} job {r.index} ({r.job_id}): outcomes {r.outcomes or 'none (lost)'}")
    received: Counter = sum((w.received for w in workers), Counter())
    return LoadReport(
        records, problems, sum(w.reconnects for w in workers), sum(w.cancels for w in workers), elapsed, received
    )


def check_fairness(journal: Path) -> list[str]:
    """Replay the daemon's journal: each client's jobs start in order, and while a client has a job waiting no
    other client starts more than once (one round)."""
    problems: list[str] = []
    owner: dict[str, str] = {}
    lanes: dict[str, deque[str]] = {}
    waits: dict[str, Counter] = {}
    worst = 0
    for line in journal.read_text().splitlines():
        event = json.loads(line)
        kind, job_id = event.get("ev"), event.get("job_id")
        if kind == "accepted":
            client = owner[job_id] = event["job"]["client_id"]
            lane = lanes.setdefault(client, deque())
            lane.append(job_id)
            if len(lane) == 1:
                waits[client] = Counter()
        elif kind == "cancelled" and job_id in lanes.get(owner.get(job_id, ""), ()):
            client = owner[job_id]
            lanes[client].remove(job_id)
            if not lanes[client]:
                waits.pop(client, None)
        elif kind == "started":
            client = owner[job_id]
            lane = lanes[client]
            if lane[0] != job_id:
                problems.append(f"{client}: job {job_id} started before its earlier job {lane[0]}")
            lane.remove(job_id)
            for other, seen in waits.items():
                if other == client:
                    continue
                seen[client] += 1
                worst = max(worst, seen[client])
                if seen[client] > 1:
                    problems.append(f"{other} waited while {client} started {seen[client]} jobs")
            if lane:
                waits[client] = Counter()
            else:
                waits.pop(client, None)
    if not owner:
        problems.append("the journal holds no jobs")
    return problems


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values), q))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_daemon(home: Path) -> tuple[subprocess.Popen, str, str, Path]:
    env = dict(os.environ)
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_DATA_HOME=str(home / ".local/share"),
        ACE_BRIDGE_CONFIG_DIR=str(home / "config"),
        ACE_BRIDGE_DATA_DIR=str(home / "data"),
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    env.pop("ACE_BRIDGE_URL", None)
    env.pop("ACE_BRIDGE_TOKEN", None)
    log = open(home / "daemon.log", "ab")  # noqa: SIM115 - lives with the process
    process = subprocess.Popen(
        [sys.executable, "-m", "bridge_server.cli", "serve", "--demo", "--port", "0", "--idle-unload", "3600"],
        env=env,
        cwd=str(REPO),
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    assert process.stdout is not None
    for line in process.stdout:  # blocks until the daemon prints where it listens
        if "listening on" in line:
            url = line.split("listening on", 1)[1].strip()
            token = (home / "config" / "token").read_text().strip()
            return process, url, token, home / "data" / "journal.jsonl"
    raise RuntimeError(f"daemon exited:\n{(home / 'daemon.log').read_text(errors='replace')}")


async def warm_up(url: str, token: str) -> None:
    """One job of each kind so the model is loaded before RSS is read."""
    report = await run_load(url, token, clients=1, jobs=2, seed=0, cancel_p=0, disconnect_p=0, window=1)
    if report.problems:
        raise RuntimeError(f"warm-up failed: {report.problems}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cancel", type=float, default=0.1)
    parser.add_argument("--disconnect", type=float, default=0.1)
    parser.add_argument("--window", type=int, default=4, help="unfinished jobs per client at a time")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ace-load-") as tmp:
        process, url, token, journal = start_daemon(Path(tmp))
        try:
            asyncio.run(warm_up(url, token))
            rss_before = rss_mb(process.pid)
            report = asyncio.run(
                run_load(
                    url,
                    token,
                    clients=args.clients,
                    jobs=args.jobs,
                    seed=args.seed,
                    cancel_p=args.cancel,
                    disconnect_p=args.disconnect,
                    window=args.window,
                )
            )
            rss_after = rss_mb(process.pid)
            problems = report.problems + check_fairness(journal)
        finally:
            process.terminate()
            process.wait(60)
    counts = report.outcome_counts()
    latencies = report.first_progress_latencies()
    finished = sum(counts.values())
    print(
        f"clients {args.clients} x jobs {args.jobs}, seed {args.seed}: {finished} jobs in {report.elapsed_s:.1f} s "
        f"= {finished / report.elapsed_s:.2f} jobs/s"
    )
    print(f"outcomes: {dict(counts)}; cancels sent {report.cancels_sent}; reconnects {report.reconnects}")
    print(
        f"submit -> first progress: p50 {percentile(latencies, 50) * 1000:.0f} ms, "
        f"p99 {percentile(latencies, 99) * 1000:.0f} ms (n={len(latencies)})"
    )
    print(
        f"daemon RSS: before {rss_before:.1f} MB, after {rss_after:.1f} MB, delta {rss_after - rss_before:+.1f} MB "
        f"(goal within 50 MB)"
    )
    if problems:
        print(f"FAILED: {len(problems)} problems", file=sys.stderr)
        for problem in problems[:50]:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print("OK: every job ended exactly once at its client; round robin held")
    return 0


if __name__ == "__main__":
    sys.exit(main())
