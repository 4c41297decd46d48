"""The ``cbir`` command line: thin commands over the library, one module per command group.

Each command parses its options, makes one library call and prints the
result (see :mod:`cbir.cli._common` for the conventions every command shares).
Library modules are imported inside the commands so ``cbir --help`` stays fast.
"""

from __future__ import annotations

import typer

from typing import Annotated

from cbir.cli import benchmark, demo, duplicates, evaluate, index, info, manage, query, serve, train, watch
from cbir.cli._common import TidyCommand, TidyGroup

app = typer.Typer(
    name="cbir",
    cls=TidyGroup,
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
app.command("query", cls=TidyCommand)(query.query)
app.command("evaluate", cls=TidyCommand)(evaluate.evaluate)
app.command("info", cls=TidyCommand)(info.info)
app.command("list", cls=TidyCommand)(info.list_command)
app.command("remove", cls=TidyCommand)(index.remove)
app.command("prune", cls=TidyCommand)(manage.prune)
app.command("delete", cls=TidyCommand)(manage.delete)
app.command("duplicates", cls=TidyCommand)(duplicates.duplicates)
app.command("train-autoencoder", cls=TidyCommand)(train.train_autoencoder_command)
app.command("demo", cls=TidyCommand)(demo.demo)
app.command("benchmark", cls=TidyCommand)(benchmark.benchmark)
app.command("serve", cls=TidyCommand)(serve.serve)
app.command("watch", cls=TidyCommand)(watch.watch)


def main() -> None:
    """The ``cbir`` command: settle this process's own settings, then run the app."""
    _settle_process()
    app()


def _settle_process() -> None:
    """What the application sets for its process; library code leaves process state alone.

    Before anything imports cv2 or TensorFlow (``import cbir.cli`` imports neither):
    OpenCV reads its pixel cap at import (it covers the formats whose header
    :func:`cbir.images.decode.image_size` does not read), TensorFlow its C++
    log level. Engines' native notices are captured on fd 2
    (:mod:`cbir.features._tensorflow`); worker processes inherit all three.
    """
    import logging
    import os
    import sys

    from cbir.features._tensorflow import QUIET_ENGINES_ENV

    os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", "180000000")  # cbir.images.decode.MAX_IMAGE_PIXELS
    # A broken video is one warning line of cbir's: FFmpeg's own messages (read once, when OpenCV first
    # opens a video, in workers too) and OpenCV's backend notices are not printed as well.
    os.environ.setdefault("OPENCV_FFMPEG_DEBUG", "1")  # lets the next line's level take effect
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")  # read when cv2 is imported: worker processes
    if "cv2" in sys.modules and os.environ["OPENCV_LOG_LEVEL"] == "ERROR":  # this process imported it already
        sys.modules["cv2"].utils.logging.setLogLevel(sys.modules["cv2"].utils.logging.LOG_LEVEL_ERROR)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault(QUIET_ENGINES_ENV, "1")
    # Ray's warnings are notes for Ray developers here (token authentication on
    # the local cluster it starts, progress bars turned off); errors still show.
    for name in ("tensorflow", "absl", "ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)
