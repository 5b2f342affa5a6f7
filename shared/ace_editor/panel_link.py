"""A link that opens one result in the daemon's control panel, for an editor's "Open in panel" button.

The panel needs a session: whoever holds the token proves it for a one-time code (`POST /panel/api/code`, the
same two-step proof `ace-bridge panel` makes, ace_protocol.auth `panel_code`: the token never travels) and opens
`/panel/?code=...`. The result to show rides in the fragment (`#entry=<job id>-<index>`, the daemon's history
entry name): the daemon's redirect to the clean `/panel/` has no fragment of its own, so the browser keeps this
one, and the panel opens that entry's viewer when it loads.
"""

from __future__ import annotations

import re
import urllib.parse

from .protocol import auth, discovery

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
    try:
        path = auth.panel_code(base, endpoint.token, timeout)
    except auth.PanelUnauthorized:
        raise PanelLinkError(
            f"The daemon at {base} refused the token, or another program took its port (it did not prove it holds "
            "the token, so nothing secret was sent to it). Check the Token field (`ace-bridge token`)."
        ) from None
    except auth.PanelCodeError as exc:
        raise PanelLinkError(f"No panel link: {exc}.") from None
    return f"{base}{path}#entry={entry}"
