"""A daemon subprocess for kill tests: the real app on the tiny model, with its step gate preset.

`--step-budget N` lets N denoising steps run in all, then holds the engine between two steps for good, so a test
knows a job is mid-run when it sends SIGKILL, without timing. Prints one JSON line {"port", "pid"} on stdout when
it listens (the test blocks reading it); logs go to stderr.

    python gated_daemon.py --config DIR --data DIR --model DIR [--step-budget N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "shared")]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--step-budget", type=int, default=None)
    args = parser.parse_args()

    from aiohttp import web

    from bridge_server.config import ServerConfig
    from bridge_server.jobs.gate import Gate
    from bridge_server.server.app import BridgeRunner, create_app

    def engine_factory():
        from bridge_server.engine.ace_plus import AcePlusEngine

        return AcePlusEngine(Path(args.model), idle_unload_s=None, t5_max_length=32)

    config = ServerConfig(
        config_dir=Path(args.config),
        data_dir=Path(args.data),
        port=0,
        engine_factory=engine_factory,
        idle_unload_s=None,
        gate=Gate(step_budget=args.step_budget),
    )

    async def serve() -> None:
        runner = BridgeRunner(create_app(config), handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        print(json.dumps({"port": port, "pid": os.getpid()}), flush=True)  # the test blocks on this line
        await asyncio.Event().wait()  # until killed

    asyncio.run(serve())


if __name__ == "__main__":
    main()
