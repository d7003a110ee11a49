"""The ``featurecache`` command: a thin typer layer over the library.

- :mod:`~featurecache.cli.main`: the app, logging options, the error guard;
- :mod:`~featurecache.cli.options`: every option, declared once;
- :mod:`~featurecache.cli.groups`: options that go together, received as one object;
- :mod:`~featurecache.cli.commands`: one short body per command;
- :mod:`~featurecache.cli.render`: what the commands print.
"""

from featurecache.cli import commands  # noqa: F401  (registers the commands)
from featurecache.cli.main import app

__all__ = ["app"]
