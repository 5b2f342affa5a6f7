"""A link that opens one result in the daemon's control panel, for an editor's "Open in panel" button.

The panel needs a session: whoever can read the token trades it for a one-time code (`POST /panel/api/code`, the
same step `ace-bridge panel` takes) and opens `/panel/?code=...`. The result to show rides in the fragment
(`#entry=<job id>-<index>`, the daemon's history entry name): the daemon's redirect to the clean `/panel/` has no
fragment of its own, so the browser keeps this one, and the panel opens that entry's viewer when it loads.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request

from .protocol import discovery

#: The daemon's history entry names: the job id (32 hex digits) and the image's index.
ENTRY_RE = re.compile(r"^[0-9a-f]{32}-\d{1,3}$")


class PanelLinkError(Exception):
    """The panel cannot be opened for this result; `str()` says why and what to do."""


def entry_name(job_id: str, index: int = 0) -> str:
    entry = f"{job_id}-{index}"
    if not ENTRY_RE.match(entry):
        raise PanelLinkError(f"'{job_id}' is not a job the daemon kept (a job id is 32 hexadecimal digits)")
    return entry


def http_base(url: str) -> str:
    """`ws://host:port/v1/ws` -> `http://host:port` (wss -> https)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("ws", "wss", "http", "https") or not parsed.netloc:
        raise PanelLinkError(f"'{url}' is not a daemon address (ws://host:port/v1/ws)")
    scheme = "https" if parsed.scheme in ("wss", "https") else "http"
    return f"{scheme}://{parsed.netloc}"


def panel_link(url: str, token: str, job_id: str, index: int = 0, timeout: float = 10.0) -> str:
    """The one-time panel URL that opens result `index` of `job_id`. Empty `url` / `token`: found the way the
    plug-in finds its daemon (ACE_BRIDGE_URL, runtime.json, the token file). Raises PanelLinkError."""
    entry = entry_name(job_id, index)
    endpoint = discovery.resolve(url or None, token or None)
    if not endpoint.token:
        raise PanelLinkError("No token for the daemon: fill in the Token field, or run the daemon on this computer.")
    base = http_base(endpoint.url)
    request = urllib.request.Request(
        f"{base}/panel/api/code",
        data=b"{}",
        method="POST",
        headers={"Authorization": f"Bearer {endpoint.token}", "Content-Type": "application/json"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # our own daemon: no proxy
    try:
        with opener.open(request, timeout=timeout) as reply:
            data = json.loads(reply.read(65536).decode("utf-8"))
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise PanelLinkError("The daemon refused the token: check the Token field (`ace-bridge token`).") from exc
        if exc.code == 404:
            raise PanelLinkError("This daemon has no control panel (update ACE Bridge).") from exc
        raise PanelLinkError(f"The daemon answered {exc.code} {exc.reason} when asked for a panel link.") from exc
    except (OSError, ValueError) as exc:
        raise PanelLinkError(f"Cannot reach the daemon at {base}: {exc}") from exc
    path = data.get("path") if isinstance(data, dict) else None
    if not isinstance(path, str) or not path.startswith("/panel/"):
        raise PanelLinkError("The daemon's answer had no panel link.")
    return f"{base}{path}#entry={entry}"
