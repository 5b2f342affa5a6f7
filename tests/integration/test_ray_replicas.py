"""`ace-bridge serve --ray`: engine replicas on a local two-node Ray cluster (CPU, tiny model), one cluster and one
daemon for the whole module (a Ray start costs seconds on 2 cores). Jobs from three clients spread over both
replicas and equal single-engine results; fairness is per person (named tokens) across connections and replicas; a
replica killed mid-job costs a restart, not the job; a revoked named token closes its owner's session and cancels
their queued job; a daemon killed mid-job delivers that job once after its restart; a restarted daemon reattaches
to the running app."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from ace_protocol.client import BridgeClient, ClientError, new_client_id
from daemon_fixture import free_port, start_process_daemon
from integration_helpers import connect, ellipse_mask, gradient_image, gray_payload, result_array, rgba_payload
from prerequisites import in_ci
from ray_cluster import new_cluster

pytestmark = pytest.mark.slow

if importlib.util.find_spec("ray") is None:
    if in_ci():
        raise RuntimeError("CI installs the ray extra (.ci/steps/10_python.sh); ray is missing")
    pytest.skip(
        "needs the ray extra: pip install -c .ci/constraints.txt torch==2.13.0 -e '.[ray]'", allow_module_level=True
    )

IMAGE = gradient_image(64, 48)
MASK = ellipse_mask(64, 48)
#: A job that takes seconds on the tiny model (100 steps at 768x768, about 4 s here and longer on a loaded CI
#: machine), so it is surely still running when acted on (384x384 took about a second: too close).
LONG = {"steps": 100, "size": (768, 768)}


def inpaint(client: BridgeClient, seed: int, steps: int = 4, prompt: str = "a red hat", size=None, count: int = 1):
    image, mask = (IMAGE, MASK) if size is None else (gradient_image(*size), ellipse_mask(*size))
    return client.submit(
        "inpaint",
        prompt,
        image=rgba_payload(image),
        mask=gray_payload(mask),
        params={"seed": seed, "steps": steps, "count": count},
    )


def finish(handle, timeout: float = 120) -> list:
    return list(handle.events(timeout=timeout))


def results(events) -> list:
    return [e for e in events if e.TYPE == "result"]


def status(daemon, client: BridgeClient | None = None) -> dict:
    """The daemon's status; another client sees other clients' jobs without their ids, so ask as the owner."""
    if client is not None:
        reply = client.status()
    else:
        with connect(daemon, client_id=new_client_id("status")) as probe:
            reply = probe.status()
    return {"engine": reply.engine, "queue": reply.queue}


def _panel(daemon):
    """The control panel's own login: a one-time code for a cookie; (base url, opener holding the cookie)."""
    import http.cookiejar
    import urllib.request

    from bridge_server.server.panel.window import request_code

    base = f"http://127.0.0.1:{daemon.port}"
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    opener.open(request_code(base, daemon.token), timeout=30).read()
    return base, opener


def panel_state(daemon) -> dict:
    """What the control panel shows (`/panel/api/state`)."""
    base, opener = _panel(daemon)
    with opener.open(base + "/panel/api/state", timeout=30) as reply:
        return json.loads(reply.read())


def _set_paused(daemon, paused: bool) -> None:
    import urllib.request

    base, opener = _panel(daemon)
    request = urllib.request.Request(
        base + "/panel/api/pause",
        data=json.dumps({"paused": paused}).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with opener.open(request, timeout=30) as reply:
        assert json.loads(reply.read())["paused"] is paused


@contextlib.contextmanager
def paused_queue(daemon) -> Iterator[None]:
    """The panel's Pause switch for the block: running jobs go on, no queued job starts until the block ends
    (also when it fails, so the module's other tests get a working queue)."""
    _set_paused(daemon, True)
    try:
        yield
    finally:
        _set_paused(daemon, False)


def journal(daemon) -> list[dict]:
    path = daemon.data_dir / "journal.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def job_ends(daemon) -> dict[str, str]:
    """job id → how it ended (done, cancelled, failed), from the daemon's journal."""
    return {e["job_id"]: e["ev"] for e in journal(daemon) if e.get("ev") in ("done", "cancelled", "failed")}


def ace(daemon, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bridge_server.cli", *args], env=daemon.env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    ray = new_cluster(tmp_path_factory.mktemp("ray-home"))
    try:
        ray.start(free_port())
        yield ray
    finally:
        ray.stop()


@pytest.fixture(scope="module")
def daemon_home(tmp_path_factory, cluster):
    home = tmp_path_factory.mktemp("daemon-home")
    cluster.give_token_to(home)
    return home


@pytest.fixture(scope="module")
def ray_daemon(cluster, daemon_home, tiny_model_root):
    daemon = start_process_daemon(
        daemon_home, "--ray", cluster.address, "--replicas", "2", tiny_root=tiny_model_root, timeout=240
    )
    holder = {"daemon": daemon}
    yield holder
    holder["daemon"].stop()


def test_jobs_from_three_clients_spread_over_both_replicas_and_equal_single_engine_results(
    ray_daemon, tmp_path, tiny_model_root
):
    daemon = ray_daemon["daemon"]
    engine = status(daemon)["engine"]
    assert engine["ray"]["replicas"] == 2 and "inpaint" in engine["tasks"]
    clients = [connect(daemon, client_id=f"artist-{n}") for n in range(3)]
    try:
        handles = [(seed, inpaint(client, seed)) for seed, client in zip((11, 12, 13, 14, 15, 16), clients * 2)]
        got = {}
        for seed, handle in handles:
            events = finish(handle)
            assert events[-1].TYPE == "done", events[-1]
            [result] = results(events)
            got[seed] = (result_array(result), result.provenance["replica"]["replica"])
    finally:
        for client in clients:
            client.close()
    assert len({replica for _, replica in got.values()}) == 2, "the jobs must spread over both replicas"

    plain = start_process_daemon(tmp_path / "plain-home", tiny_root=tiny_model_root)
    try:
        with connect(plain, client_id="reference") as client:
            for seed, (pixels, _) in got.items():
                [reference] = results(finish(inpaint(client, seed)))
                assert np.array_equal(result_array(reference), pixels), f"seed {seed} differs from one engine"
    finally:
        plain.stop()
    text = ace(daemon, "status").stdout
    assert text.count("replica ") >= 2 and "2 of 2 replica(s) live" in text, text


def test_a_replica_killed_mid_job_costs_a_restart_not_the_job(ray_daemon, cluster):
    daemon = ray_daemon["daemon"]
    with connect(daemon, client_id="victim") as client:
        handle = inpaint(client, 21, **LONG)
        events = []
        for event in handle.events(timeout=120):
            events.append(event)
            if event.TYPE == "progress":
                break
        running = [j for j in status(daemon, client)["queue"] if j["job_id"] == handle.id]
        replica = running[0]["replica"]
        [entry] = [r for r in status(daemon)["engine"]["replicas"] if r["replica"] == replica]
        assert cluster.replica_pids().get(entry["pid"], "").startswith("ray::ServeReplica:ace-bridge:AceEngine")
        os.kill(entry["pid"], signal.SIGKILL)
        events += finish(handle, timeout=180)
    notes = [e.note for e in events if e.TYPE == "queued" and e.note]
    assert any("restarted on another GPU" in n for n in notes), [e.TYPE for e in events]
    assert events[-1].TYPE == "done", events[-1]
    [result] = results(events)
    assert result.provenance["replica"]["replica"] != replica
    restarts = [e for e in journal(daemon) if e.get("ev") == "restarted" and e["job_id"] == handle.id]
    assert len(restarts) == 1 and restarts[0]["replica"] == replica
    engine = status(daemon)["engine"]
    assert engine["ray"]["restarts"] >= 1
    assert any(r["replica"] == replica and r["state"] in ("died", "gone") for r in engine["replicas"])


def test_cancel_reaches_the_replica_at_the_next_step(ray_daemon):
    daemon = ray_daemon["daemon"]
    with connect(daemon, client_id=new_client_id("canceller")) as client:
        handle = inpaint(client, 51, **LONG)
        events = []
        for event in handle.events(timeout=120):
            events.append(event)
            if event.TYPE == "progress":
                break
        client.cancel(handle.id)
        events += finish(handle)
        assert events[-1].TYPE == "cancelled" and not results(events)
        assert max(e.step for e in events if e.TYPE == "progress") < LONG["steps"]
        # The replica is free again at once: a short job goes through.
        assert finish(inpaint(client, 52))[-1].TYPE == "done"
    assert not any(r.get("busy") for r in status(daemon)["engine"]["replicas"])


def wait_for_live_replicas(daemon, count: int, timeout: float = 90) -> None:
    """After a kill Serve needs some seconds for the replacement; the daemon's capacity follows it."""
    deadline = time.monotonic() + timeout
    while status(daemon)["engine"]["ray"]["live"] < count:
        assert time.monotonic() < deadline, status(daemon)["engine"]
        time.sleep(0.5)  # polling the daemon's view of the cluster, not a test sleep


def test_revoking_a_token_closes_the_session_and_cancels_the_queued_job(ray_daemon):
    daemon = ray_daemon["daemon"]
    wait_for_live_replicas(daemon, 2)  # both replicas busy with Bob's jobs, so Alice's surely waits
    alice_token = ace(daemon, "token", "add", "alice").stdout.strip()
    bob_token = ace(daemon, "token", "add", "bob").stdout.strip()
    assert "alice" in ace(daemon, "token", "list").stdout
    bob = BridgeClient(daemon.url, bob_token, client_id="bob-krita", reconnect_timeout=0)
    alice = BridgeClient(daemon.url, alice_token, client_id="alice-gimp", reconnect_timeout=0)
    bob.connect()
    alice.connect()
    try:
        # Bob keeps both replicas busy and the queue is paused, so Alice's job waits however fast Bob's jobs run and
        # however long the revoke takes to land (a test that raced Bob's jobs against the revoke failed in CI).
        bobs = [inpaint(bob, 31, **LONG), inpaint(bob, 32, **LONG)]
        for handle in bobs:
            next(e for e in handle.events(timeout=120) if e.TYPE in ("progress", "done"))
        with paused_queue(daemon):
            queued = inpaint(alice, 33)
            assert [j["state"] for j in status(daemon, alice)["queue"] if j["job_id"] == queued.id] == ["queued"], (
                json.dumps(status(daemon, bob))
            )
            closed = threading.Event()
            alice.on_connection_change = lambda state: closed.set() if state != "connected" else None
            assert ace(daemon, "token", "revoke", "alice").returncode == 0
            assert closed.wait(30), "alice's session must be closed at once"
            deadline = time.monotonic() + 30
            while (ends := job_ends(daemon)).get(queued.id) is None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert ends.get(queued.id) == "cancelled", "the revoked person's queued job is cancelled, not left to run"
        for handle in bobs:  # Bob, a different person, is untouched
            assert finish(handle, timeout=180)[-1].TYPE == "done"
        assert job_ends(daemon)[queued.id] == "cancelled"
        with pytest.raises(ClientError):
            BridgeClient(daemon.url, alice_token, client_id="alice-again", reconnect_timeout=0).connect()
    finally:
        alice.close()
        bob.close()


def test_fairness_is_per_person_across_connections_and_replicas(ray_daemon, tmp_path, tiny_model_root):
    """Carol runs three editors and sends six jobs; Dave sends two after her. Dave's jobs take every other turn
    instead of waiting behind all of Carol's, both replicas work, and every image equals one engine's."""
    daemon = ray_daemon["daemon"]
    wait_for_live_replicas(daemon, 2)
    carol_token = ace(daemon, "token", "add", "carol").stdout.strip()
    dave_token = ace(daemon, "token", "add", "dave").stdout.strip()
    filler = connect(daemon, client_id=new_client_id("filler"))
    carols = [BridgeClient(daemon.url, carol_token, client_id=f"carol-{n}", reconnect_timeout=0) for n in range(3)]
    dave = BridgeClient(daemon.url, dave_token, client_id="dave-gimp", reconnect_timeout=0)
    for client in [*carols, dave]:
        client.connect()
    try:
        # Both replicas busy with someone else's long jobs, so everything Carol and Dave send waits in the queue.
        fillers = [inpaint(filler, 71, **LONG), inpaint(filler, 72, **LONG)]
        for handle in fillers:
            next(e for e in handle.events(timeout=120) if e.TYPE in ("progress", "done"))
        with paused_queue(daemon):  # nothing Carol or Dave sends starts early, however loaded the machine is
            sent = [(seed, "carol", inpaint(client, seed)) for seed, client in zip(range(81, 87), carols * 2)]
            sent += [(seed, "dave", inpaint(dave, seed)) for seed in (91, 92)]
            ids = {handle.id for _, _, handle in sent}
            early = [e for e in journal(daemon) if e.get("ev") == "started" and e["job_id"] in ids]
            snapshot = panel_state(daemon)
            panel = snapshot["engine"]
            people = {row["person"]: row for row in panel["people"]}
            assert (people["carol"]["queued"], people["dave"]["queued"]) == (6, 2), panel["people"]
            replicas = [r for r in panel["replicas"] if r["state"] == "ready"]
            assert len(replicas) == 2 and all(r["busy"] for r in replicas), panel["replicas"]
            # Positions count rounds of both replicas: two jobs start in the next round, two in the one after, ...
            queued = [(row["person"], row["position"]) for row in snapshot["queue"] if row["state"] == "queued"]
            assert queued == [(p, n // 2 + 1) for n, p in enumerate(["carol", "dave", "carol", "dave"] + ["carol"] * 4)]
            for handle in fillers:  # the replicas come free; from here the queue alone decides who goes next
                filler.cancel(handle.id)
                assert finish(handle)[-1].TYPE == "cancelled"
        got = {}
        for seed, _, handle in sent:
            events = finish(handle)
            assert events[-1].TYPE == "done", events[-1]
            [result] = results(events)
            got[seed] = (result_array(result), result.provenance["replica"]["replica"])
    finally:
        for client in [filler, *carols, dave]:
            client.close()
    person = {handle.id: who for _, who, handle in sent}
    starts = [person[e["job_id"]] for e in journal(daemon) if e.get("ev") == "started" and e["job_id"] in person]
    assert starts == ["carol", "dave", "carol", "dave", "carol", "carol", "carol", "carol"], starts
    assert len({replica for _, replica in got.values()}) == 2, "the jobs must spread over both replicas"
    assert not early, "all eight jobs waited behind the long ones (else the order proves nothing)"

    plain = start_process_daemon(tmp_path / "plain-home", tiny_root=tiny_model_root)
    try:
        with connect(plain, client_id="reference") as client:
            for seed, (pixels, _) in got.items():
                [reference] = results(finish(inpaint(client, seed)))
                assert np.array_equal(result_array(reference), pixels), f"seed {seed} differs from one engine"
    finally:
        plain.stop()


def test_a_daemon_killed_mid_job_reattaches_and_delivers_the_result_once(
    ray_daemon, cluster, daemon_home, tiny_model_root
):
    """The daemon process dies while a replica runs Erin's job; the cluster goes on. The restarted daemon takes the
        job back from the replicas' keeper and Erin's editor, resuming with its client_id and secret, gets each of its two
    images once: the one the keeper finished while no daemon watched, and the next, started by the new daemon."""
    daemon = ray_daemon["daemon"]
    wait_for_live_replicas(daemon, 2)
    erin = BridgeClient(daemon.url, daemon.token, client_id="erin-krita", reconnect_timeout=0)
    erin.connect()
    secret = erin.client_secret
    handle = inpaint(erin, 61, steps=100, size=(768, 768), count=2)  # image 0 likely outlasts the restart
    next(e for e in handle.events(timeout=120) if e.TYPE == "progress")
    assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL  # mid-job, no chance to clean up
    erin.close()
    again = start_process_daemon(
        daemon_home, "--ray", cluster.address, "--replicas", "2", tiny_root=tiny_model_root, timeout=240
    )
    ray_daemon["daemon"] = again
    back = BridgeClient(again.url, again.token, client_id="erin-krita", client_secret=secret, reconnect_timeout=0)
    try:
        back.connect()
        (resumed,) = back.fetch_unacknowledged(wait=10)
        assert resumed.id == handle.id
        events = finish(resumed, timeout=240)
        assert events[-1].TYPE == "done", [e.TYPE for e in events]
        assert [(r.index, r.seed) for r in results(events)] == [(0, 61), (1, 62)], "each image exactly once"
        assert {r.provenance["job_id"] for r in results(events)} == {handle.id}
        back.ack(handle.id)
    finally:
        back.close()
    [reattached] = [e for e in journal(again) if e.get("ev") == "reattached" and e["job_id"] == handle.id]
    assert reattached["index"] == 0 and reattached["found"] in ("running", "result", "lost"), reattached
    ends = [e["ev"] for e in journal(again) if e.get("job_id") == handle.id and e["ev"] in ("done", "failed")]
    assert ends == ["done"]
    later = BridgeClient(again.url, again.token, client_id="erin-krita", client_secret=secret, reconnect_timeout=0)
    try:
        assert later.connect().pending == [], "acknowledged: never delivered a second time"
    finally:
        later.close()


def test_a_job_whose_replica_dies_while_the_daemon_is_down_is_rerun_and_delivered_once(
    ray_daemon, cluster, daemon_home, tiny_model_root
):
    """The daemon dies mid-job, then the replica running that job dies too, before any daemon is back. The keeper
    still holds the inputs: the restarted daemon journals the loss and the restart, reruns the image on the other
    replica and Finn's editor gets one result."""
    daemon = ray_daemon["daemon"]
    wait_for_live_replicas(daemon, 2)
    finn = BridgeClient(daemon.url, daemon.token, client_id="finn-gimp", reconnect_timeout=0)
    finn.connect()
    secret = finn.client_secret
    handle = inpaint(finn, 62, steps=100, size=(768, 768))  # seconds: still running when its replica is killed
    next(e for e in handle.events(timeout=120) if e.TYPE == "progress")
    [running] = [j for j in status(daemon, finn)["queue"] if j["job_id"] == handle.id]
    [entry] = [r for r in status(daemon)["engine"]["replicas"] if r["replica"] == running["replica"]]
    assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL
    finn.close()
    assert cluster.replica_pids().get(entry["pid"], "").startswith("ray::ServeReplica:ace-bridge:AceEngine")
    os.kill(entry["pid"], signal.SIGKILL)
    again = start_process_daemon(
        daemon_home, "--ray", cluster.address, "--replicas", "2", tiny_root=tiny_model_root, timeout=240
    )
    ray_daemon["daemon"] = again
    back = BridgeClient(again.url, again.token, client_id="finn-gimp", client_secret=secret, reconnect_timeout=0)
    try:
        back.connect()
        (resumed,) = back.fetch_unacknowledged(wait=10)
        events = finish(resumed, timeout=300)
        assert events[-1].TYPE == "done", [e.TYPE for e in events]
        (result,) = results(events)
        assert result.seed == 62 and result.provenance["replica"]["replica"] != running["replica"]
        back.ack(handle.id)
    finally:
        back.close()
    mine = [e for e in journal(again) if e.get("job_id") == handle.id]
    assert [(e["ev"], e.get("found")) for e in mine if e["ev"] == "reattached"] == [("reattached", "lost")]
    assert [e["replica"] for e in mine if e["ev"] == "restarted"] == [running["replica"]]
    assert [e["ev"] for e in mine if e["ev"] in ("done", "failed")] == ["done"]
    wait_for_live_replicas(again, 2)  # Serve has replaced the killed replica before the next test


def test_a_restarted_daemon_reattaches_to_the_running_replicas(ray_daemon, cluster, daemon_home, tiny_model_root):
    daemon = ray_daemon["daemon"]
    before = {r["pid"] for r in status(daemon)["engine"]["replicas"] if r["state"] == "ready" and r.get("pid")}
    assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL  # killed, not shut down: the Serve app stays up
    again = start_process_daemon(
        daemon_home, "--ray", cluster.address, "--replicas", "2", tiny_root=tiny_model_root, timeout=240
    )
    ray_daemon["daemon"] = again
    engine = status(again)["engine"]
    assert engine["ray"]["reattached"], again.log()
    with connect(again, client_id="after-restart") as client:
        events = finish(inpaint(client, 41))
    assert events[-1].TYPE == "done"
    assert results(events)[0].provenance["replica"]["pid"] in before | set(cluster.replica_pids())
    assert before <= set(cluster.replica_pids()), "the replicas must be the same processes, not redeployed"
