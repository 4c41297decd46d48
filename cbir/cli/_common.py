"""What every command shares: output consoles, error handling, logging, progress, common options.

Results go to stdout (``--json`` for scripts); progress bars, warnings and
errors go to stderr. Library errors (:class:`cbir.errors.CbirError`) become a
one-line ``error: ...`` message and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from rich.console import Console
from typer.core import TyperCommand, TyperGroup

stderr = Console(stderr=True, highlight=False, soft_wrap=True)

# -- help layout -------------------------------------------------------------
def _tidy_params(command, ctx) -> None:
    """One look for every command's help: no type beside flags, defaults written one way.

    Typer's rich help asks each option for ``display_type_rich``, which (unlike
    click's plain help) does not skip flags, so every flag, ``--help`` included,
    showed ``<bool>``. Defaults Typer fills in are written like the ones in
    help texts, ``(default: ...)``, instead of ``[default: ...]``. Only this
    command's own parameter objects change: Typer itself is left as it is.
    """
    from typer.core import TyperArgument, TyperOption

    for param in command.get_params(ctx):
        if getattr(param, "_cbir_tidy", False):
            continue
        param._cbir_tidy = True
        if getattr(param, "is_flag", False):
            param.display_type_rich = lambda ctx: None
        if not isinstance(param, (TyperOption, TyperArgument)) or isinstance(param.show_default, str):
            continue
        default = param._extract_default_help_str(ctx=ctx)
        if default is None or not (param.show_default or ctx.show_default):
            continue
        text = param._get_default_string(ctx=ctx, show_default_is_str=False, default_value=default)
        if text:
            param.help = f"{param.help or ''} (default: {text})".strip()
        param.show_default = False


class TidyCommand(TyperCommand):
    """A command whose help has the one look of :func:`_tidy_params`, and whose options listed in
    :data:`OPTIONAL_VALUES` may leave their value out (``--verify`` alone, or ``--verify 50``)."""

    def parse_args(self, ctx, args):
        return super().parse_args(ctx, with_optional_values(args, {p.opts[0] for p in self.params if p.opts}))

    def format_help(self, ctx, formatter) -> None:
        _tidy_params(self, ctx)
        return super().format_help(ctx, formatter)


#: Options whose value may be left out, and the value they then take (Typer has no optional values).
OPTIONAL_VALUES = {"--verify": "100", "--local-features": "rootsift"}


def with_optional_values(args: list[str], options: set[str]) -> list[str]:
    """``args`` with the default value inserted after an :data:`OPTIONAL_VALUES` option given without one
    (at the end, or before something that is not a whole number: the next option or an argument)."""
    out = list(args)
    i = 0
    while i < len(out):
        default = OPTIONAL_VALUES.get(out[i]) if out[i] in options else None
        if default is not None and (i + 1 == len(out) or not _takes(default, out[i + 1])):
            out.insert(i + 1, default)
        i += 1
    return out


def _takes(default: str, text: str) -> bool:
    """Whether ``text`` is a value for an option whose default is ``default``: a whole number for a
    number; for a word, a known kind or anything that is neither an option nor an existing path."""
    if default.isdigit():
        try:
            int(text)
        except ValueError:
            return False
        return True
    from cbir.features.local import KINDS

    # A word that is no option and no existing file or folder is taken as the value (and checked as one).
    return text in KINDS or not (text.startswith("-") or os.path.exists(text))


class TidyGroup(TyperGroup):
    """The ``cbir`` group, its help tidied like its commands'."""

    def format_help(self, ctx, formatter) -> None:
        _tidy_params(self, ctx)
        return super().format_help(ctx, formatter)


# -- shared options ----------------------------------------------------------
NameOption = Annotated[
    str, typer.Option("--name", "-n", help="Name of the index (a folder under --index-dir).", show_default=False)
]
IndexDirOption = Annotated[
    Optional[Path],
    typer.Option(
        "--index-dir",
        help="Folder holding named indexes. (default: $CBIR_INDEX_DIR, else ./indexes where it exists, else the per-user data folder)",
        file_okay=False,
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
NprobeOption = Annotated[
    Optional[int], typer.Option("--nprobe", min=1, help="IVF indexes: inverted lists to visit (more = exact-er, slower).")
]
EfSearchOption = Annotated[
    Optional[int], typer.Option("--ef-search", min=1, help="HNSW indexes: candidate list size (more = exact-er, slower).")
]


def handle_errors(command: Callable) -> Callable:
    """Turn library errors into ``error: message`` on stderr and an exit code."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from cbir.errors import CbirError

        _configure_logging()
        try:
            returned = command(*args, **kwargs)
            sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
            return returned
        except BrokenPipeError:
            # The reader (head, grep -m1) has what it wanted: stop quietly, successfully.
            _drop_stdout()
            raise typer.Exit(code=0) from None
        except CbirError as exc:
            _print_error(str(exc))
            raise typer.Exit(code=exc.exit_code) from None
        except KeyboardInterrupt:
            stderr.print("interrupted: work committed so far is kept; run the same command again to continue")
            raise typer.Exit(code=130) from None
        except Exception as exc:
            # A full disk the library did not see coming: most often stdout itself (> /dev/full).
            from cbir.errors import is_disk_full

            if not is_disk_full(exc):
                raise
            _drop_stdout()  # or Python's final flush of stdout fails again, with a traceback
            if isinstance(exc, OSError):
                _print_error(f"cannot write {exc.filename or 'the output'}: {exc.strerror or exc}")
            else:
                _print_error(f"no space left on the device: {exc}; free some space and run the same command again")
            raise typer.Exit(code=1) from None

    return wrapper


def _print_error(message: str) -> None:
    from rich.markup import escape

    from cbir.display import display_path

    # Escaped: a message may hold brackets (pip install 'cbir[cnn]', a path),
    # and a file name's undecodable bytes or newline (one message, one line).
    stderr.print(f"[bold red]error:[/] {escape(display_path(message, backslashes=False))}", markup=True)


def _drop_stdout() -> None:
    """Point stdout at /dev/null so Python's final flush does not complain about the closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        pass


class _ConsoleLogHandler(logging.Handler):
    """Warnings from the library as one ``warning: ...`` line each, above any progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        from cbir.display import display_path

        prefix = "warning: " if record.levelno >= logging.WARNING else ""
        stderr.print(f"{prefix}{display_path(record.getMessage(), backslashes=False)}", markup=False)


def show_training_epochs() -> None:
    """One line per training epoch (the autoencoder logs them at INFO)."""
    logging.getLogger("cbir.features.autoencoder").setLevel(logging.INFO)


def _configure_logging() -> None:
    logger = logging.getLogger("cbir")
    if not any(isinstance(h, _ConsoleLogHandler) for h in logger.handlers):
        logger.addHandler(_ConsoleLogHandler())
        logger.setLevel(logging.WARNING)
        logger.propagate = False


def progress_bar():
    """A rich progress bar on stderr when it is a terminal; silent otherwise."""
    from cbir.progress import SILENT

    if not stderr.is_terminal:
        return SILENT
    return _RichProgress()


class _RichProgress:
    #: Seconds between updates of the bar's count. Rich's advance and rate
    #: update cost 36 us a call, a third of what the indexing process itself
    #: does per colour image. Steps that arrive just before a long pause (a
    #: batch through the network in this process) show with the next update.
    UPDATE_S = 0.1

    def __init__(self):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self._columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
        )
        self._progress_class = Progress
        self._bar = None
        self._task = None
        self._pending, self._updated = 0, 0.0

    def start(self, description: str, total: int, unit: str = "images") -> None:
        self.stop()
        self._unit = unit
        self._pending, self._updated = 0, 0.0
        self._bar = self._progress_class(*self._columns, console=stderr, transient=True)
        self._bar.start()
        self._task = self._bar.add_task(description, total=total, rate="")

    def status(self, message: str) -> None:
        from rich.progress import SpinnerColumn, TextColumn

        self.stop()
        self._unit = ""
        self._bar = self._progress_class(SpinnerColumn(), TextColumn("{task.description}"), console=stderr, transient=True)
        self._bar.start()
        self._task = self._bar.add_task(message, total=None, rate="")

    def advance(self, steps: int = 1) -> None:
        if self._bar is None:
            return
        self._pending += steps
        now = time.monotonic()
        if now - self._updated >= self.UPDATE_S:
            self._update(now)

    def _update(self, now: float) -> None:
        if self._pending:
            self._bar.advance(self._task, self._pending)
            self._pending, self._updated = 0, now
            speed = self._bar.tasks[0].speed
            if speed:
                # Images come many per second; epochs take many seconds each.
                rate = f"{speed:.1f} img/s" if self._unit == "images" else f"{1 / speed:.1f} s per {self._unit.rstrip('s')}"
                self._bar.update(self._task, rate=rate)

    def stop(self) -> None:
        if self._bar is not None:
            try:
                self._update(time.monotonic())
            finally:
                self._bar.stop()
                self._bar = None


def print_json(data: Any, indent: int | None = 2) -> None:
    """``data`` as indented JSON on stdout (``indent=None``: one line); file names' undecodable bytes written as ``\\xNN``."""
    sys.stdout.write(json.dumps(_json_safe(data), indent=indent, ensure_ascii=False) + "\n")
    if indent is None:
        sys.stdout.flush()  # JSON lines are read as they come


def _json_safe(data: Any) -> Any:
    # JSON text is Unicode: a name's undecodable bytes (surrogate escapes) cannot be written as they are.
    from cbir.display import display_path

    if isinstance(data, str):  # names in it were shown by their to_dict: only what JSON cannot carry
        return display_path(data, controls=False, backslashes=False)
    if isinstance(data, dict):
        return {_json_safe(k): _json_safe(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_json_safe(v) for v in data]
    return data


def show(path: str) -> str:
    """A file name as one printable line (:func:`cbir.display.display_path`)."""
    from cbir.display import display_path

    return display_path(path)


PathColumnOption = Annotated[
    Optional[str], typer.Option("--path-column", help="Labels CSV: column of image paths. (default: the first column)", show_default=False)
]
LabelColumnOption = Annotated[
    Optional[str],
    typer.Option(
        "--label-column",
        help="Labels CSV: column of labels. (default: 'label', 'class', 'class_name' or 'category', else the last column)",
        show_default=False,
    ),
]


def read_labels(path: Path | None, path_column: str | None, label_column: str | None) -> dict[str, str] | None:
    from cbir.errors import UsageError
    from cbir.images.labels import read_labels_csv

    if path is None:
        if path_column or label_column:
            raise UsageError("--path-column and --label-column need --labels")
        return None
    return read_labels_csv(path, path_column, label_column)


# -- an index name given as NAME or --name ------------------------------------
NameArgument = Annotated[
    Optional[str], typer.Argument(metavar="NAME", help="Name of the index (or use --name).", show_default=False)
]
OptionalNameOption = Annotated[
    Optional[str], typer.Option("--name", "-n", help="Name of the index (a folder under --index-dir).", show_default=False)
]


def pick_name(positional: str | None, option: str | None, required: bool = True) -> str | None:
    """The index name from NAME or --name (either form, not two different names)."""
    from cbir.errors import UsageError

    if positional is not None and option is not None and positional != option:
        raise UsageError(f"two index names given ({positional!r} and --name {option!r}): give one")
    name = option if option is not None else positional
    if name is None and required:
        raise UsageError("which index? give its name (NAME or --name NAME; 'cbir list' shows them)")
    return name


# -- re-ranking (cbir.ann.rerank) -------------------------------------------------
ExpandOption = Annotated[
    Optional[int],
    typer.Option(
        "--expand",
        help="Alpha query expansion: search again with the weighted mean of the query and its top N results "
        "(N >= 1). (default: 2; --no-expand turns it off)",
        show_default=False,
    ),
]
VerifyOption = Annotated[
    Optional[int],
    typer.Option(
        "--verify",
        metavar="[K]",
        help="Spatial verification: re-rank the top K results (alone: 100) by RANSAC inliers of their local "
        "features with the query's, fused with the global score. The index needs local features "
        "(cbir index FOLDER --name NAME --local-features; nothing is re-embedded).",
        show_default=False,
    ),
]
NoExpandOption = Annotated[bool, typer.Option("--no-expand", help="One plain search, no query expansion.")]
AlphaOption = Annotated[
    Optional[float],
    typer.Option(
        "--alpha",
        help="Re-ranking weight exponent: a neighbour with similarity s weighs s^alpha (0 = plain mean). (default: 3)",
        show_default=False,
    ),
]


def expand_setting(expand: int | None, no_expand: bool) -> int | None:
    """``--expand`` / ``--no-expand`` as the library's ``expand`` argument (``None`` = off)."""
    from cbir.errors import UsageError
    from cbir.ann.rerank import DEFAULT_EXPAND, check_expand

    if no_expand and expand is not None:
        raise UsageError("--expand and --no-expand contradict each other")
    if no_expand:
        return None
    check_expand(expand)
    return DEFAULT_EXPAND if expand is None else expand


def alpha_setting(alpha: float | None) -> float:
    from cbir.ann.rerank import DEFAULT_ALPHA, check_alpha

    alpha = DEFAULT_ALPHA if alpha is None else alpha
    check_alpha(alpha)
    return alpha


# -- filters (cbir.store.catalogue.ImageFilter) ------------------------------------
UnderOption = Annotated[
    Optional[Path],
    typer.Option("--under", help="Only images in this folder or below it (a path prefix of whole folder names).", show_default=False),
]
LabelFilterOption = Annotated[
    Optional[str], typer.Option("--label", help="Only images with this label (their folder name, or the labels CSV's).", show_default=False)
]


TakenAfterOption = Annotated[
    Optional[str],
    typer.Option("--taken-after", metavar="DATE", help="Only images taken on or after this ISO date (2023-07-01, or 2023-07-01T18:00); "
                 "without an EXIF date, the file's modification time counts.", show_default=False),
]
TakenBeforeOption = Annotated[
    Optional[str],
    typer.Option("--taken-before", metavar="DATE", help="Only images taken on or before this ISO date (a bare date keeps all of that day).", show_default=False),
]
CameraOption = Annotated[
    Optional[str],
    typer.Option("--camera", metavar="TEXT", help="Only images from a camera whose make and model contain TEXT, any letter case "
                 "('canon', 'EOS R5', 'iphone').", show_default=False),
]


def image_filter(under: Path | None, label: str | None, taken_after: str | None = None, taken_before: str | None = None,
                 camera: str | None = None):
    """``--under`` / ``--label`` / ``--taken-after`` / ``--taken-before`` / ``--camera`` as the library's filter
    (``None`` when none is given); a date that is not ISO is one error line."""
    from cbir.images.scan import normalize_path
    from cbir.store.catalogue import ImageFilter, iso_moment

    for value, option in ((taken_after, "--taken-after"), (taken_before, "--taken-before")):
        if value is not None:
            iso_moment(value, option)  # the error names the option
    if all(v is None for v in (under, label, taken_after, taken_before, camera)):
        return None
    return ImageFilter(under=None if under is None else str(normalize_path(under)), label=label,
                       taken_after=taken_after, taken_before=taken_before, camera=camera)
