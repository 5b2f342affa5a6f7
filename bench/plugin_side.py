"""Plugin-side benchmark: from pressing Generate to the submit frame leaving the editor's process, timed inside the
real editors with the plugins' own pixel-reading code.

    python bench/plugin_side.py [--size 4096] [--repeats 3] [--editors krita,gimp]

Starts a real `ace-bridge serve --demo` (tiny model, temp HOME, free loopback port), then runs
bench/editor_scripts/krita_plugin_side.py in every Krita found by tests/editors/krita_runner.py (host 5.1.5,
trixie chroot 5.2.9) and bench/editor_scripts/gimp_plugin_side.py in GIMP 3.0 (trixie chroot). Inside each editor
an N x N 8-bit RGBA document with a gradient, a half-transparent layer and a soft elliptical selection (context
region = the whole canvas) is read for the visible image and for the active layer, `repeats` times each; every
phase is timed with time.perf_counter in the editor's process:

  read image   the image over the context region (Krita: Document.pixelData after refreshProjection, or the
               layer's projectionPixelData; GIMP: read_visible = Layer.new_from_visible + GEGL get, or
               read_drawable), in the format the plugin sends (Krita bgra8 as-is, GIMP R'G'B'A u8)
  read mask    the selection over the region as 8-bit (Krita Selection.pixelData, GIMP read_selection_mask)
  payloads     Krita: the rest of read_context (QByteArray -> bytes, ImagePayloads); GIMP: plan_job + build_params
  encode       ace_protocol.codec.encode of the submit frame (measured alone; `submit` encodes again itself)
  connect      GIMP only: the plug-in process runs once per Generate and connects each time
  submit       BridgeClient.submit until `accepted` (frame sent, daemon decoded, validated and journalled it)
  send         submit until its frame has been written: with frames, encode + WebSocket masking + write; with
               shared memory (protocol §6a), the `alloc` round trip + copying the pixels into the daemon's
               segment + a small frame. Each read is submitted both ways, by two clients, in the same run.
  frame left   Generate -> frame left = read image + read mask + payloads + [connect] + send
  total        Generate -> accepted = read image + read mask + payloads + [connect] + submit

Each job is cancelled right after `accepted` and waited for, so the daemon is idle during the next measurement.
Prints the medians as a Markdown table; --json writes every run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "bench" / "editor_scripts"
sys.path[:0] = [str(REPO), str(REPO / "shared"), str(REPO / "tests"), str(REPO / "tests" / "editors")]

import chroot  # noqa: E402
import gimp_runner  # noqa: E402
import krita_runner  # noqa: E402
from daemon_fixture import start_process_daemon  # noqa: E402

from bridge_server.engine.tiny import build_tiny_model  # noqa: E402

PHASES = (
    "read_image_s",
    "read_mask_s",
    "payloads_s",
    "encode_s",
    "connect_s",
    "send_s",
    "submit_s",
    "total_s",
    "left_s",
)


def run_krita(install: krita_runner.KritaInstall, work: Path, daemon, size: int, repeats: int, timeout: float) -> dict:
    home = work / f"krita-{install.name}"
    home.mkdir()
    pykrita = krita_runner.install_plugin(home)
    config = {
        "paths": [install.path(pykrita), install.path(pykrita / "ace_bridge" / "_vendor")],
        "url": daemon.url,
        "token": daemon.token,
        "size": size,
        "repeats": repeats,
    }
    krita_runner.SCRIPTS = SCRIPTS  # run_script puts this folder on the editor's PYTHONPATH
    result = krita_runner.run_script(install, home, "krita_plugin_side", config, timeout=timeout)
    result["name"] = install.name
    return result


def run_gimp(work: Path, daemon, size: int, repeats: int, timeout: float) -> dict:
    from bridge_server.install.gimp import install_gimp

    os.environ.setdefault("ACE_BRIDGE_WHEEL_CACHE", str(REPO / ".cache/wheels"))
    profile = work / "gimp-profile"
    plugin_dir = install_gimp(profile)
    out = work / "gimp-result.json"
    config = {
        "url": daemon.url,
        "token": daemon.token,
        "size": size,
        "repeats": repeats,
        "out": str(out),
        "plugin_dir": str(plugin_dir),
        "scripts_dir": chroot.inside_path(SCRIPTS),
    }
    (work / "gimp-config.json").write_text(json.dumps(config))
    rc, output = gimp_runner.run_gimp_batch(
        SCRIPTS / "gimp_plugin_side.py",
        profile,
        timeout,
        env={"ACE_BENCH_CONFIG": str(work / "gimp-config.json")},
        binds=[work],
    )
    if not out.is_file():
        raise RuntimeError(f"GIMP wrote no result (rc {rc}):\n{output[-4000:]}")
    result = json.loads(out.read_text())
    result.update(output=output, rc=rc, name="trixie-gimp")
    return result


def medians(runs: list[dict], source: str, transport: str) -> dict[str, float]:
    rows = [r for r in runs if r["source"] == source and r.get("transport", "frames") == transport]
    for r in rows:  # frame left = everything before submit + submit until its frame has been written
        r["left_s"] = r["total_s"] - r["submit_s"] + r["send_s"]
    return {k: statistics.median(r[k] for r in rows) for k in PHASES + ("frame_bytes",) if rows and k in rows[0]}


TRANSPORTS = (("shm", "shared memory"), ("frames", "frames"))


def table(results: list[dict]) -> str:
    head = (
        "| editor | read | pixels in | region | read image | read mask | payloads | encode* | connect "
        "| send | **Generate → frame left** | submit → accepted | Generate → accepted | request |"
    )
    lines = [head, "|" + "---|" * 14]
    ms = lambda v: "–" if v is None else f"{v * 1000:.0f} ms"  # noqa: E731
    for res in results:
        for source, label in (("image", "visible image"), ("layer", "active layer")):
            for transport, how in TRANSPORTS:
                m = medians(res["runs"], source, transport)
                if not m:
                    continue
                region = next(r["region"] for r in res["runs"] if r["source"] == source)
                lines.append(
                    f"| {res['editor']} | {label} | {how} | {region[2]}×{region[3]} | {ms(m['read_image_s'])} | "
                    f"{ms(m['read_mask_s'])} | {ms(m['payloads_s'])} | {ms(m['encode_s'])} | "
                    f"{ms(m.get('connect_s'))} | {ms(m['send_s'])} | **{ms(m['left_s'])}** | {ms(m['submit_s'])} | "
                    f"{ms(m['total_s'])} | {m['frame_bytes'] / 1e6:.1f} MB |"
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=4096, help="document side in pixels (default 4096)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--editors", default="krita,gimp", help="comma list of krita, gimp")
    ap.add_argument("--timeout", type=float, default=480, help="seconds per editor run")
    ap.add_argument("--json", type=Path, help="write every run here")
    args = ap.parse_args(argv)
    wanted = {e.strip() for e in args.editors.split(",") if e.strip()}
    results, problems = [], []
    with tempfile.TemporaryDirectory(prefix="ace-bench-plugin-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)
        tiny = work / "tiny-model"
        build_tiny_model(tiny)
        daemon = start_process_daemon(work / "home", tiny_root=tiny)
        try:
            runners = []
            if "krita" in wanted:
                installs = krita_runner.krita_installs()
                if not installs:
                    problems.append("no Krita found (.ci/steps/15_krita_host.sh, 20_trixie_chroot.sh)")
                runners += [
                    (i.name, lambda i=i: run_krita(i, work, daemon, args.size, args.repeats, args.timeout))
                    for i in installs
                ]
            if "gimp" in wanted:
                if gimp_runner.gimp_available():
                    runners.append(("gimp", lambda: run_gimp(work, daemon, args.size, args.repeats, args.timeout)))
                else:
                    problems.append("no GIMP 3 found (.ci/steps/20_trixie_chroot.sh)")
            for name, fn in runners:
                t0 = time.monotonic()
                try:
                    res = fn()
                except Exception as exc:  # report and go on with the other editors
                    problems.append(f"{name}: {exc}")
                    continue
                if res.get("error") or not res.get("runs"):
                    problems.append(f"{name}: {res.get('error') or 'no runs'}\n{res.get('output', '')[-3000:]}")
                    continue
                print(
                    f"{res['editor']}: {len(res['runs'])} runs in {time.monotonic() - t0:.0f} s "
                    f"(document set-up {res.get('setup_s', 0):.1f} s, WebSocket masking by {res.get('apply_mask')}, "
                    f"shared memory {res.get('shared_memory')})",
                    file=sys.stderr,
                )
                results.append(res)
        finally:
            daemon.stop()
    print(
        f"\nPlugin side, {args.size}x{args.size} RGBA u8 document, medians of {args.repeats} "
        "(* encode measured alone; the client's send encodes again, so it is inside `send`, not added)\n"
    )
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps([{k: v for k, v in r.items() if k != "output"} for r in results], indent=1))
    for p in problems:
        print(f"\nPROBLEM: {p}", file=sys.stderr)
    return 1 if problems or not results else 0


if __name__ == "__main__":
    sys.exit(main())
