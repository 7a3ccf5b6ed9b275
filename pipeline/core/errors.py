"""Exception types. Library code raises these; only the CLI maps them to exit codes."""

from __future__ import annotations


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
