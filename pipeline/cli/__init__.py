"""The ``virnucpro`` command line. Commands only parse options, build a config and call one
library function; this module maps library exceptions to exit codes.

Subcommands live in ``pipeline/cli/<name>.py`` (each defines ``command``) and are imported lazily,
so ``virnucpro --help`` does not import torch.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import sys
import traceback

import click

from pipeline import __version__
from pipeline.core.config import Settings
from pipeline.core.errors import as_virnucpro_error

# name -> module under pipeline.cli; a module that does not exist yet is simply not listed.
_COMMANDS = {
    "prepare": "prepare",
    "embed": "embed",
    "predict": "predict",
    "train": "train",
    "validate": "validate",
    "ingest": "ingest",
    "report": "report",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(
            name
            for name, mod in _COMMANDS.items()
            if importlib.util.find_spec(f"pipeline.cli.{mod}") is not None
        )

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        module = _COMMANDS.get(name)
        if module is None or importlib.util.find_spec(f"pipeline.cli.{module}") is None:
            return None
        command = importlib.import_module(f"pipeline.cli.{module}").command
        if command.callback is not None and not getattr(command.callback, "_path_hint", False):
            command.callback = _remember_output(command.callback)
        return command


# Options whose value names what a command writes, in order of preference: an OS error that carries
# no file name (a failed write() on an open file) is reported against it.
_OUTPUT_OPTIONS = ("out_dir", "out_html", "json_path", "db_path", "out")


class _State:
    debug = False
    path_hint: object = None


def _remember_output(callback):
    @functools.wraps(callback)
    def wrapper(*args, **kwargs):
        _State.path_hint = next((kwargs[k] for k in _OUTPUT_OPTIONS if kwargs.get(k)), None)
        return callback(*args, **kwargs)

    wrapper._path_hint = True
    return wrapper


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="virnucpro")
@click.option("--debug", is_flag=True, help="On an error, also print the Python traceback.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """VirNucPro: identify viral short sequences with packed DNABERT-S + ESM-2 embeddings."""
    _State.debug = debug
    settings = Settings.from_env()
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    ctx.obj = settings


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: every error becomes one ``error:`` line and an exit code.

    Library errors keep their own code (README, "Exit codes"); operating-system errors become
    `FileSystemError` (74) naming the path; anything else is an internal error (1). The traceback
    is printed only with ``--debug``.
    """
    _State.debug = "--debug" in (sys.argv[1:] if argv is None else argv)  # before the group parses it
    _State.path_hint = None
    try:
        rv = cli.main(args=argv, prog_name="virnucpro", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # the one boundary: every other error is reported the same way
        if _State.debug:
            traceback.print_exc()
        error = as_virnucpro_error(exc, _State.path_hint)
        if error is None:
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            click.echo(
                f"error: internal error ({type(exc).__name__}: {first}); rerun with --debug for the "
                "traceback and report it",
                err=True,
            )
            sys.exit(1)
        click.echo(f"error: {_one_line(str(error))}", err=True)
        sys.exit(error.exit_code)
    sys.exit(rv if isinstance(rv, int) else 0)


def _one_line(message: str) -> str:
    return " ".join(part.strip() for part in message.splitlines() if part.strip())
