"""The ``virnucpro`` command line. Commands only parse options, build a config and call one
library function; this module maps library exceptions to exit codes.

Subcommands live in ``pipeline/cli/<name>.py`` (each defines ``command``) and are imported lazily,
so ``virnucpro --help`` does not import torch.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys

import click

from pipeline import __version__
from pipeline.core.config import Settings
from pipeline.core.errors import VirNucProError

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
        return importlib.import_module(f"pipeline.cli.{module}").command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="virnucpro")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """VirNucPro: identify viral short sequences with packed DNABERT-S + ESM-2 embeddings."""
    settings = Settings.from_env()
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    ctx.obj = settings


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: library errors become a one-line message and an exit code."""
    try:
        rv = cli.main(args=argv, prog_name="virnucpro", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except VirNucProError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)
