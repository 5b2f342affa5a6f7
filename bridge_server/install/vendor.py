"""A plug-in's private `_vendor` package: this project's shared packages and pure-Python msgpack and websockets.

Editors ship their own Python without our packages, so `vendor_into(target_dir)` makes `target_dir` a package
(`ace_bridge._vendor` in Krita, `_vendor` in GIMP's plug-in process) holding ace_protocol and ace_editor, and
copies the `.py` files of msgpack and websockets there, without their optional C extensions (msgpack then uses `msgpack.fallback`,
websockets its Python frame masking). The sources are the packages' sdists from the package index, fetched with
`pip download` at the versions this ace-bridge runs with and cached in the wheel cache folder
(env ACE_BRIDGE_WHEEL_CACHE, default `<user cache dir>/ace-bridge/wheels`), so repeated installs and tests do not
hit the index. Offline, the files of the installed distributions are copied instead. Nothing here is committed.

The packages inside import one another relatively (ace_protocol/bundled.py, ace_editor/protocol.py), so a plug-in
adds nothing to `sys.path` and no global `msgpack`, `websockets` or `ace_protocol` appears in the editor's Python;
`verify_vendored` checks exactly that in a fresh interpreter.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

#: Distribution name -> top-level package copied into `_vendor/`.
VENDORED = {"msgpack": "msgpack", "websockets": "websockets"}
#: This project's packages that run inside the editors (Python 3.10, no Qt, no GIMP).
SHARED_PACKAGES = ("ace_protocol", "ace_editor")
_VENDOR_INIT = '''"""Private copies of ace_protocol, ace_editor, msgpack and websockets for this plug-in only (filled by
`ace-bridge install`; they import one another relatively, never through sys.path)."""
'''
#: Copied from a package: Python sources and typing markers only (no .c/.pyx/.so, no tests).
_KEEP_SUFFIXES = (".py", ".typed")


class VendorError(RuntimeError):
    """A dependency could not be vendored; the message says what to do."""


def wheel_cache_dir() -> Path:
    """Where downloaded sdists/wheels are kept between installs."""
    override = os.environ.get("ACE_BRIDGE_WHEEL_CACHE")
    if override:
        return Path(override)
    try:
        import platformdirs

        return Path(platformdirs.user_cache_dir("ace-bridge", appauthor=False)) / "wheels"
    except ImportError:  # pragma: no cover - platformdirs is a dependency
        return Path.home() / ".cache" / "ace-bridge" / "wheels"


def pinned_version(dist: str) -> str | None:
    """The version this Python runs with, so the editors speak to the daemon with the same library."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def vendor_into(target_dir: Path) -> None:
    """Make `target_dir` the plug-in's private vendor package: the shared packages, pure-Python msgpack and
    websockets (replacing older copies), checked to import privately in a fresh interpreter without their C
    extensions. Raises VendorError with a readable message."""
    target_dir = Path(target_dir)
    copy_shared_packages(target_dir)
    vendor_libraries(target_dir)
    verify_vendored(target_dir)


def copy_shared_packages(target_dir: Path) -> None:
    """`__init__.py` (so the folder is a package) and a fresh copy of each of SHARED_PACKAGES."""
    target_dir.mkdir(parents=True, exist_ok=True)
    (target_dir / "__init__.py").write_text(_VENDOR_INIT, encoding="utf-8")
    for name in SHARED_PACKAGES:
        source = Path(importlib.import_module(name).__file__ or "").resolve().parent
        dest = target_dir / name
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(source, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo"))


def vendor_libraries(target_dir: Path) -> None:
    """Pure-Python msgpack and websockets at the versions this Python runs with."""
    target_dir.mkdir(parents=True, exist_ok=True)
    for dist, package in VENDORED.items():
        version = pinned_version(dist)
        dest = target_dir / package
        if dest.exists():
            shutil.rmtree(dest)
        archive = _cached_sdist(dist, version)
        if archive is None:
            archive = _download_sdist(dist, version)
        if archive is not None:
            _extract_package(archive, package, dest)
            licence = _sdist_licence(archive)
        else:
            _copy_installed(dist, package, dest)
            licence = _installed_licence(dist)
        if licence is None:
            raise VendorError(f"no licence file found for {dist}: a vendored copy must ship with its licence")
        # Beside the library, inside its folder: the copy in a plug-in carries the terms it is distributed under.
        (dest / "LICENSE").write_bytes(licence)


#: Run in a fresh interpreter with the vendor folder's parent on sys.path: the vendored packages import through
#: the private package only, msgpack runs its pure-Python fallback, and no global name leaks.
_VERIFY = """
import importlib, sys
pkg = sys.argv[1]
for name in ("ace_protocol.client", "ace_protocol.codec", "ace_editor.jobs", "ace_editor.forms"):
    importlib.import_module(f"{pkg}.{name}")
msgpack = importlib.import_module(f"{pkg}.msgpack")
assert msgpack.Packer.__module__ == f"{pkg}.msgpack.fallback", msgpack.Packer.__module__
assert msgpack.unpackb(msgpack.packb({"a": [1, b"x"]})) == {"a": [1, b"x"]}
leaked = sorted(n for n in ("msgpack", "websockets", "ace_protocol", "ace_editor") if n in sys.modules)
assert not leaked, f"imported under global names: {leaked}"
"""


def verify_vendored(target_dir: Path) -> None:
    """Import the vendored packages privately in an isolated interpreter (see _VERIFY)."""
    target_dir = Path(target_dir)
    code = f"import sys; sys.path.insert(0, {str(target_dir.parent)!r})\n" + _VERIFY
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MSGPACK_PUREPYTHON")}
    proc = subprocess.run(
        [sys.executable, "-I", "-B", "-c", code, target_dir.name], capture_output=True, text=True, env=env, check=False
    )
    if proc.returncode != 0:
        raise VendorError(f"the vendored packages in {target_dir} do not import cleanly:\n{proc.stderr.strip()}")


def _sdist_names(dist: str, version: str | None) -> list[str]:
    if version is None:
        return []
    stem = f"{dist.replace('-', '_')}-{version}"
    return [f"{stem}.tar.gz", f"{dist}-{version}.tar.gz", f"{stem}.zip"]


def _cached_sdist(dist: str, version: str | None) -> Path | None:
    cache = wheel_cache_dir()
    for name in _sdist_names(dist, version):
        if (cache / name).is_file():
            return cache / name
    return None


def _download_sdist(dist: str, version: str | None) -> Path | None:
    """`pip download` the sdist into the cache; None when pip or the index is unavailable."""
    cache = wheel_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    requirement = f"{dist}=={version}" if version else dist
    with tempfile.TemporaryDirectory(prefix="ace-bridge-dl-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--disable-pip-version-check",
            "--no-deps",
            "--no-binary",
            dist,
            "--no-build-isolation",
            "--dest",
            tmp,
            requirement,
        ]
        try:
            proc = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
                env={**os.environ, "MSGPACK_PUREPYTHON": "1"},
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        if proc.returncode != 0:
            return None
        found = [p for p in Path(tmp).iterdir() if p.name.endswith((".tar.gz", ".zip"))]
        if not found:
            return None
        dest = cache / found[0].name
        shutil.move(str(found[0]), dest)
        return dest


def _members(archive: Path) -> list[tuple[PurePosixPath, bytes | None]]:
    """(path, data-or-None-for-directories) of every file in an sdist."""
    out: list[tuple[PurePosixPath, bytes | None]] = []
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if not info.is_dir():
                    out.append((PurePosixPath(info.filename), zf.read(info)))
        return out
    with tarfile.open(archive) as tf:
        for member in tf.getmembers():
            if member.isfile():
                handle = tf.extractfile(member)
                out.append((PurePosixPath(member.name), handle.read() if handle else b""))
    return out


def _extract_package(archive: Path, package: str, dest: Path) -> None:
    """Copy `<...>/<package>/**/*.py` out of an sdist (e.g. `msgpack-1.1.0/msgpack/` or `src/websockets/`)."""
    members = _members(archive)
    roots = sorted(
        (path.parent for path, _ in members if path.name == "__init__.py" and path.parent.name == package),
        key=lambda p: len(p.parts),
    )
    if not roots:
        raise VendorError(f"{archive} holds no '{package}' package; delete it from {archive.parent} and retry")
    root = roots[0]
    for path, data in members:
        try:
            rel = path.relative_to(root)
        except ValueError:
            continue
        if path.suffix not in _KEEP_SUFFIXES or "tests" in rel.parts or data is None:
            continue
        out = dest.joinpath(*rel.parts)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)


def _is_licence_name(name: str) -> bool:
    return name.upper().startswith(("LICENSE", "LICENCE", "COPYING"))


def _sdist_licence(archive: Path) -> bytes | None:
    """The licence text at the top of an sdist (`msgpack-1.1.0/COPYING`, `websockets-15.0/LICENSE`)."""
    tops = sorted(
        (
            (path, data)
            for path, data in _members(archive)
            if data is not None and _is_licence_name(path.name) and len(path.parts) <= 2
        ),
        key=lambda item: len(item[0].parts),
    )
    return tops[0][1] if tops else None


def _installed_licence(dist: str) -> bytes | None:
    """The licence file recorded in the installed distribution's metadata folder."""
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if _is_licence_name(PurePosixPath(str(f)).name) and ".dist-info" in str(f):
            return Path(str(f.locate())).read_bytes()
    return None


def _copy_installed(dist: str, package: str, dest: Path) -> None:
    """Offline fallback: the Python files of the installed distribution, without compiled extensions."""
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        raise VendorError(
            f"cannot vendor {dist}: it is not in the cache {wheel_cache_dir()}, `pip download {dist}` failed "
            f"(no network?) and it is not installed here. Run `pip download --no-binary {dist} -d "
            f"{wheel_cache_dir()} {dist}` where the package index is reachable."
        ) from None
    copied = 0
    for f in files:
        parts = PurePosixPath(str(f)).parts
        if not parts or parts[0] != package or PurePosixPath(str(f)).suffix not in _KEEP_SUFFIXES:
            continue
        if "tests" in parts or "__pycache__" in parts:
            continue
        out = dest.joinpath(*parts[1:])
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f.locate(), out)
        copied += 1
    if not copied:
        raise VendorError(f"the installed {dist} has no Python files to copy")
