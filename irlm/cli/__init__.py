"""The `irlm` command: each subcommand only wires arguments to library calls. One module per group of
commands: retrieval (data, encode, index, search, eval, mine), training (train METHOD, augment, prune,
pretrain, selfretrieval, config), serving (serve, serve-llm) and runs (compare, fuse, export, run, report); common
holds the app and the options they share."""

from __future__ import annotations

import logging
import sys

import typer
from rich.logging import RichHandler

from irlm.cli import retrieval, runs, serving, training  # noqa: F401  (each registers its commands on the app)
from irlm.cli.common import app, err
from irlm.errors import InputError

__all__ = ["app", "run"]


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=err, show_path=False)])  # fmt: skip
    for noisy in ("httpx", "urllib3", "numba", "faiss"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run() -> None:
    """Entry point: bad input ends with one line on stderr and exit code 2, not a traceback.

    Usage errors are click's own (standalone mode, exit 2); InputError from the library is ours.
    """
    try:
        app()
    except InputError as e:
        _fail(e, 2)
    except RuntimeError as e:  # a teacher endpoint that stays down, or a spent budget
        from irlm.models.generator import BudgetExceeded  # imported only now: httpx costs every start 0.2 s
        from irlm.models.generator.http import EndpointError

        if not isinstance(e, (EndpointError, BudgetExceeded)):
            raise
        _fail(e, 1)
    except OSError as e:  # the file system said no (permissions, a full disk): its message names the path
        _fail(e, 1)


def _fail(e: Exception, code: int) -> None:
    from rich.markup import escape

    # escaped: a path or value such as "[1, 2]" must print as given, not be read as rich markup
    err.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
    sys.exit(code)