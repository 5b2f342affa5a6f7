"""Named tokens: one per person (`ace-bridge token add NAME`, `list`, `revoke NAME`), so a studio knows whose job is
whose and fairness is per person. They live in `people.json` (0600) beside the daemon's own token, which keeps
working as the owner's. The daemon re-reads the file when it changes: a revoked token is refused from the next
handshake on, and `enforce_revocations` closes that person's open sessions and cancels their jobs at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ace_protocol.errors import ErrorCode
from ace_protocol.messages import Error
from aiohttp import WSCloseCode

from bridge_server.server.tokens import new_token, tokens_equal, write_private

if TYPE_CHECKING:
    from bridge_server.server.state import AppState

log = logging.getLogger(__name__)
PEOPLE_FILE = "people.json"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
#: How often the daemon looks at people.json for revocations (a stat call; the file is re-read only when changed).
WATCH_S = 0.5


class PeopleError(ValueError):
    pass


def _path(config_dir: Path) -> Path:
    return config_dir / PEOPLE_FILE


def load_people(config_dir: Path) -> dict[str, dict[str, Any]]:
    """name -> {token, created}; an unreadable or damaged file counts as nobody (the owner's token still works)."""
    try:
        data = json.loads(_path(config_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    people = data.get("people") if isinstance(data, dict) else None
    if not isinstance(people, dict):
        return {}
    return {
        name: entry
        for name, entry in people.items()
        if isinstance(entry, dict) and isinstance(entry.get("token"), str) and entry["token"]
    }


def _save(config_dir: Path, people: dict[str, dict[str, Any]]) -> None:
    write_private(_path(config_dir), json.dumps({"people": people}, indent=1) + "\n")


def add_person(config_dir: Path, name: str) -> str:
    if not NAME.match(name):
        raise PeopleError(f"a name is 1-64 letters, digits or . _ @ - (starting with a letter or digit): {name!r:.70}")
    people = load_people(config_dir)
    if name in people:
        raise PeopleError(f"{name} already has a token; `ace-bridge token revoke {name}` first to replace it")
    token = new_token()
    people[name] = {"token": token, "created": time.time()}
    _save(config_dir, people)
    return token


def revoke_person(config_dir: Path, name: str) -> bool:
    people = load_people(config_dir)
    if people.pop(name, None) is None:
        return False
    _save(config_dir, people)
    return True


class PeopleBook:
    """The named tokens as the daemon sees them, re-read when people.json changes (mtime, size, inode)."""

    def __init__(self, config_dir: Path) -> None:
        self.config_dir = config_dir
        self._stamp: tuple[int, ...] | None = None
        self.people: dict[str, dict[str, Any]] = {}
        self._revoked: set[str] = set()
        self.refresh()

    def refresh(self) -> None:
        """Re-read if the file changed."""
        try:
            st = _path(self.config_dir).stat()
            # The inode too: every save is a new file (written aside, then renamed), and two saves within one
            # clock tick of the file system (a revoke and a new token at once) keep mtime and size alike.
            stamp: tuple[int, ...] | None = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            stamp = None
        if stamp == self._stamp:
            return
        self._stamp = stamp
        before = self.tokens()
        self.people = load_people(self.config_dir) if stamp is not None else {}
        now = self.tokens()
        # Noted here, whoever re-reads (a handshake does too), so the daemon's watcher never misses a revoke.
        self._revoked |= {name for name, token in before.items() if now.get(name) != token}

    def take_revoked(self) -> set[str]:
        """The people whose token was revoked or replaced since the last call."""
        revoked, self._revoked = self._revoked, set()
        return revoked

    def person_for(self, token: str) -> str | None:
        """The name a named token belongs to, else None (every entry compared, in constant time each)."""
        self.refresh()
        found = None
        for name, entry in self.people.items():
            if tokens_equal(token, entry["token"]):
                found = name
        return found

    def tokens(self) -> dict[str, str]:
        """name → token, as last read."""
        return {name: entry["token"] for name, entry in self.people.items()}


def revoke_sessions(state: AppState, revoked: set[str]) -> int:
    """Close the sessions of the people in `revoked` (owner sessions, person "", are never touched) and cancel
    their queued and running jobs; the number of sessions closed."""
    closed = 0
    for client_id, session in list(state.hub.sessions.items()):
        person = getattr(session, "person", "")
        if not person or person not in revoked:
            continue
        for job in list(state.queue.jobs.values()):
            if job.person == person and not job.state.finished:
                state.queue.cancel(job.id)
        connection = session.connection
        if connection is not None:
            connection.send(
                Error(
                    code=ErrorCode.UNAUTHORIZED.value, message=f"the token of {person} was revoked; ask for a new one"
                )
            )
            connection.outbox.put_nowait(None)
            asyncio.get_running_loop().create_task(
                connection.ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"token revoked")
            )
            session.connection = None
        del state.hub.sessions[client_id]
        closed += 1
        log.info("token of %s revoked: closed session %s", person, client_id[:12])
    # Jobs of that person from sessions already gone (queued, then disconnected) are cancelled too.
    for job in list(state.queue.jobs.values()):
        if job.person in revoked and not job.state.finished:
            state.queue.cancel(job.id)
    if closed:
        state.hub.changed()
    return closed


async def enforce_revocations(state: AppState, every_s: float = WATCH_S) -> None:
    """For the daemon's lifetime: act on every token that is gone or was replaced, whoever re-read the file."""
    book = state.people
    while True:
        await asyncio.sleep(every_s)
        book.refresh()
        revoked = book.take_revoked()
        if revoked:
            revoke_sessions(state, revoked)


def usage(state: AppState) -> list[dict[str, Any]]:
    """Per person: jobs waiting, running, done (still held for delivery), for the panel and `status`."""
    rows: dict[str, dict[str, Any]] = {}
    for job in state.queue.jobs.values():
        row = rows.setdefault(
            job.person or "(owner)",
            {"person": job.person or "(owner)", "queued": 0, "running": 0, "done": 0, "failed": 0, "cancelled": 0},
        )
        row[job.state.value] = row.get(job.state.value, 0) + 1
    return sorted(rows.values(), key=lambda r: r["person"])
