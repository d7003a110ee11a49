"""The typer app, its global options (logging), and what every command shares.

A command is registered with :func:`command`: it gets the option groups it names and
``--json``, runs inside the error guard, and returns an :class:`Output` that is printed
as JSON or as text.

Exit codes (``featurecache.errors``): 0 success; 1 error (one line on stderr, no
traceback); 2 bad usage; 3 completed, but some images were skipped; 4 another process
is writing the same data set and ``--no-wait`` was given; 5 the cache holds damaged data;
130 stopped by SIGINT (Ctrl-C), 143 by SIGTERM, at a safe point (run again to resume).
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from featurecache import api
from featurecache.cli.groups import OutputOptions, with_options
from featurecache.cli.render import emit
from featurecache.errors import (
    EXIT_ERROR,
    EXIT_OK,
    FeaturecacheError,
    Stopped,
    describe_os_error,
)

T = TypeVar("T")
EXIT_INTERRUPTED = 130

app = typer.Typer(
    name="featurecache",
    help=(
        "Run each frozen ImageNet backbone once per image, cache the bottleneck features in "
        "zarr, and train heads on them in seconds."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # help texts hold brackets ('featurecache[onnx]'), not markup
)


@app.callback()
def main(
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", "-v", help="Log progress details, and let TensorFlow's own logs through."
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Log errors only.")] = False,
    log_file: Annotated[
        Path | None,
        typer.Option(help="Also append detailed logs to this file.", show_default=False),
    ] = None,
) -> None:
    """featurecache: bottleneck features cached once, heads trained many times."""
    level = logging.ERROR if quiet else logging.INFO if verbose else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    handler.setLevel(level)
    root = logging.getLogger("featurecache")
    root.handlers[:] = [handler]
    # Python warnings (Pillow's "Corrupt EXIF data" on a damaged photo...) as one log line
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").handlers[:] = [handler]
    logging.getLogger("py.warnings").propagate = False
    root.setLevel(logging.INFO if log_file else level)
    if log_file:
        file_handler = logging.FileHandler(log_file)
        file_handler.setFormatter(
            logging.Formatter("%(asctime)s %(process)d %(name)s %(levelname)s: %(message)s")
        )
        file_handler.setLevel(logging.INFO)
        root.addHandler(file_handler)
    api.set_verbose(verbose)  # TensorFlow's and absl's own lines: only with --verbose


def guard(call: Callable[[], T]) -> T:
    """Run ``call``; turn featurecache errors into one line on stderr and an exit code."""
    try:
        return call()
    except FeaturecacheError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except OSError as exc:  # one the library did not name: still one line, no traceback
        typer.echo(f"error: {describe_os_error(exc, 'read or write a file')}", err=True)
        raise typer.Exit(EXIT_ERROR) from None
    except Stopped as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("interrupted: nothing half-written was committed", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None


@dataclass
class Output:
    """What a command hands back: the ``--json`` document, the text printed otherwise, and
    the exit code."""

    payload: Any
    text: Callable[[], None]
    code: int = EXIT_OK


def command(name: str | None = None) -> Callable[[Callable[..., Output]], Any]:
    """Register a command. Its parameters annotated with an options group get the group's
    options (:func:`featurecache.cli.groups.with_options`), and ``--json`` is added; its
    errors become one line and an exit code (:func:`guard`) and its :class:`Output` is
    printed. A command that declares ``as_json`` receives it too."""

    def decorate(body: Callable[..., Output]) -> Any:
        own = inspect.signature(body, eval_str=True).parameters
        wants_json = "as_json" in own

        @functools.wraps(body)
        def run(*, display: OutputOptions, **kwargs: Any) -> None:
            extra = {"as_json": display.as_json} if wants_json else {}
            result = guard(lambda: body(**kwargs, **extra))
            emit(display.as_json, result.payload, result.text)
            raise typer.Exit(result.code)

        keyword = inspect.Parameter.KEYWORD_ONLY
        params = [p for n, p in own.items() if n != "as_json"]
        run.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [*params, inspect.Parameter("display", keyword, annotation=OutputOptions)]
        )
        return app.command(name)(with_options(run))

    return decorate
