"""Everything the daemon is configured with, passed into `create_app(config)`; no module reads globals."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ace_protocol.codec import DEFAULT_MAX_FRAME_BYTES
from ace_protocol.discovery import DEFAULT_HOST, DEFAULT_PORT
from ace_protocol.images import DEFAULT_MAX_PIXELS

from bridge_server.jobs.gate import Gate

if TYPE_CHECKING:
    from bridge_server.engine.base import Engine


@dataclass
class ServerConfig:
    config_dir: Path  # token, runtime.json, lock
    data_dir: Path  # journal and history
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    token: str | None = None  # None: read or create the token file in config_dir
    engine_factory: Callable[[], Engine] | None = None
    gate: Gate = field(default_factory=Gate)
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_tokens_limit: int = 16384
    max_queued_per_client: int = 64
    max_queued_total: int = 512
    #: Unacknowledged jobs kept per client and in all for resume, those that ended with no result (cancelled,
    #: failed early) and those with results; older ones are forgotten as if acknowledged, results staying in
    #: history (jobs/retention.py `KeptEndings`).
    max_unacked_resultless_per_client: int = 256
    max_unacked_resultless_total: int = 4096
    max_unacked_results_per_client: int = 1024
    max_unacked_results_total: int = 16384
    #: Sessions kept for clients that are away; past this the oldest with nothing waiting are forgotten (hub.py).
    max_idle_sessions: int = 1024
    retention_s: float = 7 * 24 * 3600.0  # unacknowledged results are redelivered this long
    idle_unload_s: float | None = 600.0
    allowed_hosts: tuple[str, ...] = ()  # extra Host names for remote mode
    tls: bool = False
    shared_memory: bool = True  # offer memfd segments to loopback clients (Linux); frames otherwise
    shared_memory_max_bytes: int = 1024 * 1024 * 1024  # per connection, inputs and undelivered results together
    #: One budget for the whole daemon: inputs of waiting jobs plus shared memory of all connections. A submit or
    #: alloc that would pass it is refused (queue_full / too_large) with a message naming it.
    memory_budget_bytes: int = 4 * 1024 * 1024 * 1024
    #: Requests a second the daemon hands out among the senders asking at the time, each an equal share
    #: (server/pacing.py); a sender past its share waits, it is not refused.
    request_budget_per_s: float = 150.0
    send_stall_s: float = 30.0  # a connection whose frames cannot be sent for this long is closed (results stay)
    clock: Callable[[], float] = time.time  # injectable so tests can jump an hour ahead
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def history_dir(self) -> Path:
        return self.data_dir / "history"

    @property
    def journal_path(self) -> Path:
        return self.data_dir / "journal.jsonl"

    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.host)


def is_loopback_host(host: str) -> bool:
    """Whether `serve --host` keeps the daemon on this machine (anything else is remote mode, which needs TLS)."""
    return host in ("127.0.0.1", "::1", "localhost")
