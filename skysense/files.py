"""Files that must never be half-written or unsafe to read: one atomic writer, one safe torch loader.

Every file the library writes under its final name (safetensors weights, trainer checkpoints,
metrics, configs) goes through :func:`atomic_write`: a temporary file in the same folder, then
``os.replace``, so a crash or a full disk leaves the previous file or none, never a torn one.
Every ``.pth`` / ``.ckpt`` goes through :func:`safe_torch_load`: ``weights_only=True`` (no pickled
code runs) and a message that tells a file holding code from a damaged one.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import pickletools
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


class UnsafeCheckpointError(ValueError):
    """A pickle holds code or objects beyond tensors and plain containers; it was not loaded."""


class DamagedCheckpointError(ValueError):
    """A file that is not a readable torch checkpoint (truncated, overwritten, another format)."""


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """``write(tmp)`` to a temporary file beside ``path``, then ``os.replace(tmp, path)``.

    The file gets the usual permissions (``0666 & ~umask``), not ``mkstemp``'s 0600; the temporary
    file is removed whatever happens."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # after writing: a writer may have made the file anew (safetensors)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` through :func:`atomic_write`."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def safe_torch_load(path: str | Path, *, mmap: bool = True) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with clear errors.

    ``mmap``: memory-map the tensors (large official files load without a copy); pass ``False`` for
    state that will be modified in place, e.g. optimiser moments on resume, which would otherwise
    live in copy-on-write pages of the file. Raises ``FileNotFoundError``,
    :class:`UnsafeCheckpointError` (the file holds code: refused unread) or
    :class:`DamagedCheckpointError` (truncated, overwritten, not a torch file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint file not found")
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError as e:  # the legacy (non-zip) format cannot be memory-mapped
            if not mmap or "mmap" not in str(e):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError:
        raise
    except pickle.UnpicklingError as e:
        text = str(e)
        if "Weights only load failed" in text and _holds_code(path, text):
            raise UnsafeCheckpointError(
                f"{path}: refused unread: it holds Python objects beyond tensors and plain containers (code, "
                "or objects whose loading could run code), so it was NOT loaded. If you trust its origin, "
                "extract the state dict in an isolated environment and re-save it with "
                f"torch.save(state_dict, ...). (torch: {_cause(e)})"
            ) from None
        raise _damaged(path, e) from None
    except (RuntimeError, EOFError, OSError, KeyError, ValueError, IndexError) as e:
        raise _damaged(path, e) from None


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """The SHA-256 of a file's bytes (hex), read in chunks: the identity of a source in metadata."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _holds_code(path: Path, text: str) -> bool:
    """Whether a file ``weights_only`` refused names Python globals (functions, classes) to call.

    torch names the refused global in its message; a bare pickle (not torch's format) is scanned
    opcode by opcode, without running it: a truncated or foreign file is damaged, not unsafe."""
    if "GLOBAL" in text or "Unsupported global" in text:
        return True
    try:
        with open(path, "rb") as f:
            ops = {op.name for op, _, _ in pickletools.genops(f)}
    except Exception:  # not one complete pickle
        return False
    return bool(ops & {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ"})


def _cause(e: BaseException) -> str:
    """The line of an error that names its cause (torch's weights_only refusal opens with a paragraph
    on its defaults and closes with a pointer to the docs)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if lines and lines[0].startswith("Weights only load failed"):
        lines = [line for line in lines if not line.startswith(("Weights only", "Please file", "Check the"))]
    return (lines or [type(e).__name__])[0][:200]


def _damaged(path: Path, e: BaseException) -> DamagedCheckpointError:
    return DamagedCheckpointError(
        f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {_cause(e)}). The file is "
        "truncated, was overwritten, or is another format: restore a copy, or re-create it"
    )


def write_json(path: str | Path, obj: Any) -> Path:
    """``obj`` as indented JSON through :func:`atomic_write`."""
    import json

    text = json.dumps(obj, indent=1)

    def write(tmp: Path) -> None:
        tmp.write_text(text)

    return atomic_write(path, write)
