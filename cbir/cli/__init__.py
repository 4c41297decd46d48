"""The ``cbir`` command line: thin commands over the library, one module per command group.

Each command parses its options, makes one library call and prints the
result (see :mod:`cbir.cli._common` for the conventions every command shares).
Library modules are imported inside the commands so ``cbir --help`` stays fast.
"""

from __future__ import annotations

import typer

from typing import Annotated

from cbir.cli import benchmark, demo, duplicates, evaluate, index, info, manage, query, serve, train
from cbir.cli._common import tidy_help

tidy_help()

app = typer.Typer(
    name="cbir",
    help="Content-based image retrieval: index image folders, search them by example image, evaluate retrieval.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)



def _print_version(value: bool) -> None:
    if value:
        from cbir._version import __version__

        print(f"cbir {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", is_eager=True, callback=_print_version)
    ] = False,
) -> None:
    pass


app.command("index", cls=index.IndexCommand)(index.index)
app.command("query")(query.query)
app.command("evaluate")(evaluate.evaluate)
app.command("info")(info.info)
app.command("list")(info.list_command)
app.command("remove")(index.remove)
app.command("prune")(manage.prune)
app.command("delete")(manage.delete)
app.command("duplicates")(duplicates.duplicates)
app.command("train-autoencoder")(train.train_autoencoder_command)
app.command("demo")(demo.demo)
app.command("benchmark")(benchmark.benchmark)
app.command("serve")(serve.serve)


def main() -> None:
    app()
