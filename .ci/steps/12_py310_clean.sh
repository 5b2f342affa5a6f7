#!/usr/bin/env bash
# A clean Python 3.10 environment with nothing but msgpack and websockets: the protocol package and the editor core
# must import and work there, because they run inside Krita's and GIMP's own Python. tests/unit/test_py310_clean.py uses it.
set -euo pipefail
cd "$(dirname "$0")/../.."
ENV_DIR="${ACE_PY310_ENV:-.cache/py310-clean}"
PY310=""
for candidate in python3.10 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.10*/bin/python3.10 /usr/bin/python3.10 \
                 /usr/local/bin/python3.10; do
    if "$candidate" --version >/dev/null 2>&1; then PY310="$candidate"; break; fi
done
if [ -z "$PY310" ]; then
    echo "[12_py310_clean] no working python3.10 found" >&2
    exit 1
fi
if [ ! -x "$ENV_DIR/bin/python" ]; then
    "$PY310" -m venv "$ENV_DIR"
    "$ENV_DIR/bin/pip" install -q msgpack "websockets>=13"
fi
"$ENV_DIR/bin/python" - <<'PY'
import sys
sys.path.insert(0, "shared")
import ace_protocol.client, ace_protocol.codec, ace_protocol.geometry, ace_protocol.discovery, ace_protocol.tasks  # noqa
import ace_editor.forms, ace_editor.history, ace_editor.jobs, ace_editor.naming, ace_editor.provenance  # noqa
import ace_editor.settings  # noqa
from ace_protocol.codec import decode_client_message, encode
from ace_protocol.messages import Hello
m = Hello(client_id="c", client_name="n", client_version="v", protocol_versions=[1])
assert decode_client_message(encode(m)) == m
extra = sorted(d.metadata["Name"] for d in __import__("importlib.metadata").metadata.distributions()
               if d.metadata["Name"] not in ("pip", "setuptools", "msgpack", "websockets", "ace-bridge"))
assert not extra, extra
assert ace_editor.forms.params_from(ace_protocol.tasks.TASKS["inpaint"], {"steps": 0}) == {}
print("[12_py310_clean] ace_protocol and ace_editor import and work on", sys.version.split()[0])
PY
