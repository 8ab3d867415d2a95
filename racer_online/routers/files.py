"""Saved routers: a JSON header plus a ``.npz`` of plain arrays. Never pickle.

``save_router(router, "out/router")`` writes ``out/router.json`` (format, version, kind,
models, parameters, the arrays file's name and SHA-256) and ``out/router.npz`` (numeric and
fixed-width string arrays, read back with ``allow_pickle=False``). `load_router` reads the
header, checks the version and the checksum, and rebuilds the router of that kind.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from numpy.typing import NDArray

from racer_online.errors import InvalidInputError
from racer_online.routers.knn import KnnRouter
from racer_online.routers.text import TextRouter

FORMAT = "racer-online-router"
FORMAT_VERSION = 1
ROUTER_KINDS: dict[str, type[TextRouter] | type[KnnRouter]] = {"text": TextRouter, "knn": KnnRouter}
PLAIN_DTYPE_KINDS = "biufU"  # bool, integers, floats, fixed-width unicode: nothing pickled


def router_paths(path: Path | str) -> tuple[Path, Path]:
    """The (header ``.json``, arrays ``.npz``) pair of a router saved at ``path``."""
    path = Path(path)
    return path.with_suffix(".json"), path.with_suffix(".npz")


def save_router(
    router: TextRouter | KnnRouter, path: Path | str, *, training: dict[str, Any] | None = None
) -> Path:
    """Write ``router`` beside ``path`` as ``.json`` + ``.npz``; return the header's path.

    ``training`` is free JSON metadata kept in the header (data, split, seed).
    """
    header_path, arrays_path = router_paths(path)
    arrays = router.arrays()
    _write_atomically(arrays_path, lambda f: _save_arrays(f, arrays))
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": router.kind,
        "models": list(router.models),
        "params": router.params(),
        "arrays": {
            "file": arrays_path.name,
            "sha256": _sha256(arrays_path),
            "shapes": {name: list(a.shape) for name, a in arrays.items()},
        },
        "training": training or {},
    }
    text = json.dumps(header, indent=2) + "\n"
    _write_atomically(header_path, lambda f: f.write(text.encode()))
    return header_path


def load_router(path: Path | str) -> TextRouter | KnnRouter:
    """The router saved at ``path`` (its ``.json`` header, or the ``.npz`` beside it).

    Raises `InvalidInputError` (one line) for a missing, corrupt or foreign file, a format
    version this code does not read, or arrays that do not match the header.
    """
    header_path, _ = router_paths(path)
    header = _read_header(header_path)
    kind = header.get("kind")
    if kind not in ROUTER_KINDS:
        raise InvalidInputError(f"{header_path}: unknown router kind {kind!r}")
    try:
        file_name = str(header["arrays"]["file"])
        if Path(file_name).name != file_name:
            raise InvalidInputError(f"arrays file {file_name!r} is not a plain file name")
        arrays_path = header_path.parent / file_name
        if _sha256(arrays_path) != header["arrays"]["sha256"]:
            raise InvalidInputError(
                f"{arrays_path} does not match its header {header_path.name} (changed or "
                "corrupt): save the router again or copy both files together"
            )
        arrays = _read_arrays(arrays_path)
        for name, shape in header["arrays"]["shapes"].items():
            if list(arrays[name].shape) != shape:
                raise InvalidInputError(f"array {name!r} has shape {arrays[name].shape}")
        models = tuple(str(m) for m in header["models"])
        return ROUTER_KINDS[kind].from_saved(models, header["params"], arrays)
    except InvalidInputError as exc:
        raise InvalidInputError(f"{header_path}: {exc}") from None
    except OSError as exc:
        raise InvalidInputError(f"{header_path}: cannot read its arrays: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        detail = f"no {exc} entry" if isinstance(exc, KeyError) else str(exc)
        raise InvalidInputError(f"{header_path}: inconsistent router file ({detail})") from None


def _read_header(path: Path) -> dict[str, Any]:
    try:
        header = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidInputError(f"cannot read router file {path}: {exc.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"{path} is not a router file (not JSON: {exc})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise InvalidInputError(f"{path} is not a racer-online router file")
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        raise InvalidInputError(
            f"{path}: router format version {version!r} is not supported (this racer-online "
            f"reads version {FORMAT_VERSION}); train the router again"
        )
    return header


def _read_arrays(path: Path) -> dict[str, NDArray[Any]]:
    try:
        with np.load(path, allow_pickle=False) as saved:
            arrays = {name: saved[name] for name in saved.files}
    except (zipfile.BadZipFile, EOFError) as exc:
        raise InvalidInputError(f"{path} is not a readable .npz file: {exc}") from None
    except ValueError as exc:  # object arrays need pickle: refused
        raise InvalidInputError(f"{path} holds arrays that need pickle: {exc}") from None
    for name, array in arrays.items():
        if array.dtype.kind not in PLAIN_DTYPE_KINDS:
            raise InvalidInputError(f"array {name!r} has unsupported dtype {array.dtype}")
    return arrays


def _save_arrays(file: BinaryIO, arrays: dict[str, NDArray[Any]]) -> None:
    for name, array in arrays.items():
        if array.dtype.kind not in PLAIN_DTYPE_KINDS:
            raise InvalidInputError(f"array {name!r} has dtype {array.dtype}: not saved")
    np.savez_compressed(file, allow_pickle=False, **arrays)


def router_fingerprint(path: Path | str) -> str:
    """The SHA-256 of a saved router's two files: a retrained router scores every query
    differently, so a window of records scored by another router is void (scope identity)."""
    digest = hashlib.sha256()
    for part in router_paths(path):
        try:
            digest.update(bytes.fromhex(_sha256(part)))
        except OSError as error:
            raise InvalidInputError(f"router {part}: cannot read: {error.strerror}") from None
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write through ``write(binary_file)`` to a temporary file, then rename it to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(temporary, 0o644)  # mkstemp makes it 0600; a router is no secret
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
