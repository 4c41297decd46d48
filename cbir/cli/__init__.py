"""The ``cbir`` command line: thin commands over the library, one module per command group.

Each command parses its options, makes one library call and prints the
result (see :mod:`cbir.cli._common` for the conventions every command shares).
Library modules are imported inside the commands so ``cbir --help`` stays fast.
"""

from __future__ import annotations

import typer

from cbir.cli import benchmark, demo, duplicates, evaluate, index, info, query, serve, train

app = typer.Typer(
    name="cbir",
    help="Content-based image retrieval: index image folders, search them by example image, evaluate retrieval.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

app.command("index")(index.index)
app.command("query")(query.query)
app.command("evaluate")(evaluate.evaluate)
app.command("info")(info.info)
app.command("list")(info.list_command)
app.command("remove")(index.remove)
app.command("duplicates")(duplicates.duplicates)
app.command("train-autoencoder")(train.train_autoencoder_command)
app.command("demo")(demo.demo)
app.command("benchmark")(benchmark.benchmark)
app.command("serve")(serve.serve)


def main() -> None:
    app()
