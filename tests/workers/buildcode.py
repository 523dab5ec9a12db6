"""Packages whose installation would run their own code: an in-tree build backend (a local
folder, or its sdist) and a wheel with a `.pth` file (run by every start of the environment's
interpreter). What the code saw is written to a marker file, if it can, and built into the
package (`evilpkg.SEEN`), so a test can tell whether it ran, as whom and with what."""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

BACKEND = """\
import base64, hashlib, json, os, pathlib, zipfile

MARKER = {marker!r}
SECRET = {secret!r}


def _seen():
    seen = {{
        "aws": os.environ.get("AWS_SECRET_ACCESS_KEY"),
        "retrain": sorted(k for k in os.environ
                          if k.startswith("RETRAIN_") and k != "RETRAIN_TEST_PROCESS"),
    }}
    try:
        seen["secret"] = "read " + pathlib.Path(SECRET).read_text()[:4]
    except Exception as exc:
        seen["secret"] = type(exc).__name__
    try:
        pathlib.Path(MARKER).write_text(json.dumps(seen))
        seen["marker"] = "written"
    except Exception as exc:
        seen["marker"] = type(exc).__name__
    return seen


SEEN = _seen()


def get_requires_for_build_wheel(config_settings=None):
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    files = {{
        "evilpkg/__init__.py": "SEEN = " + repr(json.dumps(SEEN)) + "\\n",
        "evilpkg-0.1.0.dist-info/METADATA":
            "Metadata-Version: 2.1\\nName: evilpkg\\nVersion: 0.1.0\\n",
        "evilpkg-0.1.0.dist-info/WHEEL":
            "Wheel-Version: 1.0\\nGenerator: t\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n",
    }}
    name = "evilpkg-0.1.0-py3-none-any.whl"
    record = []
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as archive:
        for path, text in files.items():
            data = text.encode()
            archive.writestr(path, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{{path}},sha256={{digest.decode()}},{{len(data)}}")
        record.append("evilpkg-0.1.0.dist-info/RECORD,,")
        archive.writestr("evilpkg-0.1.0.dist-info/RECORD", "\\n".join(record) + "\\n")
    return name
"""

PYPROJECT = """\
[build-system]
requires = []
build-backend = "backend"
backend-path = ["."]

[project]
name = "evilpkg"
version = "0.1.0"
"""


def evil_package(folder: Path, marker: Path, secret: Path) -> Path:
    """A source tree of `evilpkg` 0.1.0 whose build backend records what it sees in `marker`
    (and in the package it builds) and tries to read `secret`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(PYPROJECT)
    (folder / "backend.py").write_text(BACKEND.format(marker=str(marker), secret=str(secret)))
    return folder


def evil_sdist(source: Path, folder: Path) -> Path:
    """`source` (see `evil_package`) as the sdist `evilpkg-0.1.0.tar.gz` in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    sdist = folder / "evilpkg-0.1.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as archive:
        for name in ("pyproject.toml", "backend.py"):
            archive.add(source / name, arcname=f"evilpkg-0.1.0/{name}")
        info = tarfile.TarInfo("evilpkg-0.1.0/PKG-INFO")
        data = b"Metadata-Version: 2.1\nName: evilpkg\nVersion: 0.1.0\n"
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return sdist


def pth_wheel(folder: Path, marker: Path) -> Path:
    """`pthpkg` 0.1.0, a wheel whose `.pth` file appends the worker's cloud key (or None) to
    `marker` whenever the environment's interpreter starts."""
    folder.mkdir(parents=True, exist_ok=True)
    line = (
        f"import os; open({str(marker)!r}, 'a').write("
        "repr(os.environ.get('AWS_SECRET_ACCESS_KEY')) + '\\n')\n"
    )
    files = {
        "pthpkg.pth": line,
        "pthpkg-0.1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: pthpkg\nVersion: 0.1.0\n",
        "pthpkg-0.1.0.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: t\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    wheel = folder / "pthpkg-0.1.0-py3-none-any.whl"
    record = []
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            data = text.encode()
            archive.writestr(path, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{path},sha256={digest.decode()},{len(data)}")
        record.append("pthpkg-0.1.0.dist-info/RECORD,,")
        archive.writestr("pthpkg-0.1.0.dist-info/RECORD", "\n".join(record) + "\n")
    return wheel
