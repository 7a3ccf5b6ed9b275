"""Reading weight files without trusting the sizes they declare.

A model file says how big it is in three places: its config (layers, widths), the shapes of its
tensors, and the bytes that actually back those tensors. Only the last one costs the file's author
anything. Every loader therefore checks, before it allocates a model:

1. the archive (`check_torch_archive`): a torch file must be a zip archive whose members are
   stored, not compressed (``torch.save`` never compresses; a deflated member is a zip bomb that
   ``torch.load`` would inflate into memory), and no member may extend past the end of the file;
2. the tensors (`check_dense`): each tensor must have its own bytes in the file - a stride-0
   ``expand`` view of one float can claim any shape in a few bytes;
3. the config against the known model sizes, and the model built on the meta device (no memory)
   against the tensors present (`shape_problems`); only then is the model materialised.

``torch.load`` runs with ``weights_only=True`` and ``mmap=True``: no code runs, and tensors are read
from the page cache on first use rather than copied into memory up front.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from pipeline.core.errors import ModelLoadError

_SHOW = 6


def check_torch_archive(path: str | os.PathLike[str], what: str) -> None:
    """Refuse a file that ``torch.load`` could inflate beyond its size, before it is opened.

    Raises `ModelLoadError` when ``path`` is not a zip archive (the pre-1.6 legacy format, whose
    storage sizes are read from the file and allocated before the data is checked, or not a torch
    file at all), holds a compressed member, or a member that claims more bytes than the file has.
    """
    file = Path(path)
    size = file.stat().st_size
    try:
        with zipfile.ZipFile(file) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise ModelLoadError(
            f"{file} is not a torch zip archive ({exc}): only files written by torch.save (torch >= 1.6) "
            f"are read; re-save the {what} with torch.save in a trusted environment"
        ) from None
    for info in members:
        if info.compress_type != zipfile.ZIP_STORED:
            raise ModelLoadError(
                f"{file}: member {info.filename!r} is compressed ({info.compress_size} bytes inflating to "
                f"{info.file_size}); torch.save never compresses, so this {what} was altered - refusing to "
                "inflate it. Use the original file"
            )
        if info.file_size != info.compress_size or info.header_offset + info.file_size > size:
            raise ModelLoadError(
                f"{file}: member {info.filename!r} claims {info.file_size} bytes beyond the file's {size} "
                f"bytes; the {what} is truncated or altered - use the original file"
            )


def load_torch_file(path: str | os.PathLike[str], what: str, allowed: Iterable[Any] = ()) -> Any:
    """`check_torch_archive`, then ``torch.load(weights_only=True, mmap=True)`` on the CPU with the
    extra ``allowed`` globals. Errors from ``torch.load`` itself are left to the caller, which knows
    what to say about a refused pickle."""
    check_torch_archive(path, what)
    with torch.serialization.safe_globals(list(allowed)):
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)


def check_dense(tensors: Mapping[str, Any], where: str) -> None:
    """Refuse tensors that claim more elements than the bytes behind them (stride-0 views).

    Tied weights (two names on one storage) pass: each one alone is backed by enough bytes.
    """
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise ModelLoadError(f"{where}: entry {name!r} is a {type(tensor).__name__}, not a tensor")
        need = tensor.numel() * tensor.element_size()
        have = tensor.untyped_storage().nbytes() - tensor.storage_offset() * tensor.element_size()
        if need > have:
            raise ModelLoadError(
                f"{where}: tensor {name!r} declares shape {tuple(tensor.shape)} ({need} bytes) but the file "
                f"holds {have} bytes for it (an expanded view); refusing to materialise it - use the "
                "original weights"
            )


def shape_problems(expected: Mapping[str, torch.Size], state: Mapping[str, torch.Tensor]) -> list[str]:
    """Missing keys, unexpected keys and wrong shapes of ``state`` against ``expected`` (from a model
    built on the meta device), each as a short phrase; empty when they match."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != tuple(expected[k]))
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensor(s): {', '.join(missing[:_SHOW])}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} tensor(s): {', '.join(unexpected[:_SHOW])}")
    if wrong:
        shown = ", ".join(f"{k} {tuple(state[k].shape)} != {tuple(expected[k])}" for k in wrong[:_SHOW])
        problems.append(f"{len(wrong)} wrong shape(s): {shown}")
    return problems


def positive_ints(values: Mapping[str, Any], where: str) -> dict[str, int]:
    """``values`` as positive ints; `ModelLoadError` naming the first field that is not one."""
    out = {}
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ModelLoadError(f"{where}: {name}={value!r} is not a number")
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ModelLoadError(f"{where}: {name}={value!r} is not an integer") from None
        if number != value and not (isinstance(value, str) and value.strip() == str(number)):
            raise ModelLoadError(f"{where}: {name}={value!r} is not an integer")
        if number <= 0:
            raise ModelLoadError(f"{where}: {name}={number} must be positive")
        out[name] = number
    return out


__all__ = ["check_dense", "check_torch_archive", "load_torch_file", "positive_ints", "shape_problems"]
