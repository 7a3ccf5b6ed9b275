"""Exception types. Library code raises these; only the CLI maps them to exit codes."""

from __future__ import annotations

import errno
import os


class VirNucProError(Exception):
    """Base class: the message says what is wrong, the value, and what to do."""

    exit_code = 1


class ConfigError(VirNucProError):
    """A bad option, parameter or environment variable."""

    exit_code = 2


class InputError(VirNucProError):
    """Bad input data (FASTA, ids, index files)."""

    exit_code = 3


class ModelLoadError(VirNucProError):
    """A model or classifier could not be loaded (missing, wrong format, refused by the safe loader)."""

    exit_code = 4


class BackendUnavailableError(VirNucProError):
    """An explicitly requested attention backend cannot run here."""

    exit_code = 5


class ResumeMismatchError(VirNucProError):
    """``--resume`` was asked against outputs made with another model, precision or input."""

    exit_code = 6


class NumericalError(VirNucProError):
    """NaN or Inf appeared in model outputs."""

    exit_code = 7


class OutputIntegrityError(VirNucProError):
    """Outputs are incomplete or inconsistent (missing or duplicate ids, corrupted parts)."""

    exit_code = 8


class Interrupted(VirNucProError):
    """SIGTERM/SIGINT: the current part was finished cleanly; rerun with --resume."""

    exit_code = 75  # EX_TEMPFAIL: a scheduler may retry


class ThresholdFailed(VirNucProError):
    """A validation or regression threshold failed."""

    exit_code = 9


class WorkerFailedError(VirNucProError):
    """Embedding workers kept failing and no healthy worker was left to take over their work."""

    exit_code = 10


class RunInProgressError(VirNucProError):
    """Another run holds the output directory's lock; it is left untouched."""

    exit_code = 11


class FileSystemError(VirNucProError):
    """The operating system refused a read or write (no space, permission, read-only, not a directory)."""

    exit_code = 74  # EX_IOERR


# errno -> what to do about it; the message always names the path first.
_OS_ADVICE = {
    errno.ENOSPC: "no space left on the device; free space or write to another directory",
    errno.EDQUOT: "disk quota exceeded; free space or write to another directory",
    errno.EFBIG: "file too large for the process's file-size limit (ulimit -f); raise it or write elsewhere",
    errno.EACCES: "permission denied; check the owner and mode of the path (or an immutable flag, chattr +i)",
    errno.EPERM: "operation not permitted; check the owner and mode (or an immutable flag, chattr +i)",
    errno.EROFS: "the file system is read-only; write to another directory",
    errno.ENOTDIR: "a component of the path is a file, not a directory; give a path under a directory",
    errno.EISDIR: "it is a directory; give a file path",
    errno.ENOENT: "no such file or directory; check the path",
    errno.EEXIST: "it already exists; remove it or give another path",
    errno.ENAMETOOLONG: "the name is too long; use a shorter path",
    errno.ELOOP: "too many symbolic links; check the path",
    errno.EMFILE: "too many open files; raise the limit (ulimit -n)",
    errno.EIO: "input/output error from the device; check the disk",
}


def describe_os_error(exc: OSError, path: str | os.PathLike[str] | None = None) -> FileSystemError:
    """An `OSError` as a one-line `FileSystemError` naming the path and what to do.

    ``path`` is used when the error carries no file name (a failed ``write`` on an open file).
    """
    name = exc.filename if exc.filename is not None else path
    where = f"{os.fsdecode(name)}: " if name is not None else ""
    if exc.filename2 is not None:
        where = f"{os.fsdecode(exc.filename)} -> {os.fsdecode(exc.filename2)}: "
    advice = _OS_ADVICE.get(exc.errno) if exc.errno is not None else None
    if advice is None:
        lines = str(exc).strip().splitlines()
        reason = exc.strerror or (lines[0] if lines else type(exc).__name__)
        advice = f"{reason}; check the path and the file system"
    return FileSystemError(f"{where}{advice}")


def as_virnucpro_error(
    exc: BaseException, path: str | os.PathLike[str] | None = None
) -> VirNucProError | None:
    """The typed error for ``exc`` (itself when it already is one); None when it is not known."""
    if isinstance(exc, VirNucProError):
        return exc
    if isinstance(exc, OSError):
        return describe_os_error(exc, path)
    if isinstance(exc, MemoryError):
        return VirNucProError(
            "out of memory; use smaller inputs, a smaller VIRNUCPRO_TOKEN_BUDGET or a larger machine"
        )
    return None
