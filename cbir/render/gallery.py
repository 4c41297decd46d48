"""Results as one self-contained HTML page: thumbnails embedded, nothing else to copy along.

One section per query (the query, then its matches with rank and score) or per
group of near-duplicates. Each thumbnail is a JPEG inside the page as a
``data:`` URI and links to the original file; a file gone since it was indexed
is shown as a marked placeholder.
"""

from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2

from cbir.display import display_path, natural_key
from cbir.errors import ImageError, UsageError
from cbir.fileio import write_bytes_atomic
from cbir.images.video import describe_frame, read_picture
from cbir.render.montage import fit_in_square, short_name
from cbir.retrieval.results import QueryResult

THUMBNAIL_SIDE = 200


@dataclass(frozen=True)
class Card:
    """One picture of the page."""

    path: str
    caption: str
    is_query: bool = False
    #: What the index knows of it (label, size, date), escaped for HTML.
    details: str = ""
    #: A picture to show instead of the file's thumbnail (a ``data:`` URI), e.g. an explanation panel.
    picture_uri: str | None = None
    #: A video's frame: its time in seconds (shown as that frame; the link plays the video from there).
    time: float | None = None


def _details(match) -> str:
    parts = [html.escape(display_path(match.label))] if match.label else []
    if match.size is not None:
        parts.append(f"{match.size / 1000:.1f} kB")
    date = match.taken or match.mtime  # taken: EXIF, else the file's time
    if date:
        parts.append(date[:10])
    if match.camera:
        parts.append(html.escape(match.camera))
    return " &middot; ".join(parts)


def results_page(results: Sequence[QueryResult], title: str = "cbir results", explain: bool = False) -> str:
    """The page for one or many queries, in natural order of their names (``q50`` before ``q150``).

    ``explain``: each match shown beside the query with its verified inlier
    correspondences drawn, or the regions its similarity came from where the
    search explained them, or a note that it was not verified (:mod:`cbir.render.explain`).
    """
    sections = []
    for result in sorted(results, key=lambda r: natural_key(r.query)):
        cards = [Card(result.query, "query", is_query=True)]
        for m in result.results:
            caption = f"#{m.rank} &middot; {m.score:.3f}" + (f" &middot; verified: {m.inliers} inliers" if m.verified else "")
            if m.region is not None and not m.verified:
                caption += f" &middot; most similar in the framed region ({m.region.score:.2f})"
            picture = _explanation_uri(result, m) if explain else None
            cards.append(Card(m.path, caption, details=_details(m), picture_uri=picture, time=m.time))
        sections.append((f"query: {display_path(result.query)}", cards))
    return _page(title, sections)


def _explanation_uri(result, match) -> str | None:
    from cbir.render.explain import explanation_panel, query_picture

    panel = explanation_panel(query_picture(result, match), match, THUMBNAIL_SIDE)
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(panel, cv2.COLOR_RGB2BGR))
    return "data:image/png;base64," + base64.b64encode(encoded.tobytes()).decode("ascii") if ok else None


def duplicates_page(found, title: str = "cbir duplicates") -> str:
    """The page for what :func:`cbir.retrieval.duplicates.find_duplicates` found: exact copies, then
    near-duplicates, each group with its suggested keeper framed and the reason."""
    from cbir.retrieval.keepers import group_notes

    sections = []
    gone, notes = set(found.not_kept()), group_notes(found.groups, short_name)
    for n, group in enumerate(found.groups, start=1):
        if group.tier == "exact":
            heading = f"exact copies {n}: {len(group.files)} files with the same bytes"
        else:
            heading = f"near-duplicates {n}: {len(group.files)} images, lowest similarity {group.min_score:.3f}"
        heading += f"; keep {short_name(group.kept.path)} ({group.reason})" + (f"; {notes[n - 1]}" if notes[n - 1] else "")
        cards = [
            Card(c.path, "keep" if c.path not in gone else "", is_query=i == group.keeper, details=_file_details(c), time=c.time)
            for i, c in enumerate(group.files)
        ]
        sections.append((heading, cards))
    near = f"similarity >= {found.threshold}" if found.threshold is not None else "exact copies only"
    if not sections:
        sections = [(f"no duplicates ({near})", [])]
    return _page(f"{title} ({near})", sections)


def _file_details(candidate) -> str:
    parts = [f"{candidate.width}&times;{candidate.height}"] if candidate.pixels else []
    return " &middot; ".join([*parts, f"{candidate.size / 1000:.1f} kB"])


def write_html(page: str, out_path: str | os.PathLike) -> Path:
    """Write a page atomically; the folder must exist."""
    out_path = Path(out_path)
    if out_path.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"an HTML gallery file must end in .html: {out_path}")
    if not out_path.parent.is_dir():
        raise UsageError(f"folder for the gallery does not exist: {out_path.parent}")
    try:
        write_bytes_atomic(out_path, page.encode("utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot write {out_path}: {exc.strerror or exc}") from None
    return out_path


def thumbnail_uri(path: str, side: int = THUMBNAIL_SIDE, time_s: float | None = None) -> str | None:
    """A JPEG thumbnail (aspect ratio kept) as a ``data:`` URI (a video: its frame at ``time_s``), or ``None``
    for a file that cannot be read."""
    try:
        image = read_picture(path, time_s, min_side=side)
    except ImageError:
        return None
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(fit_in_square(image, side), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    return "data:image/jpeg;base64," + base64.b64encode(encoded.tobytes()).decode("ascii") if ok else None


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h2 { font-size: 1em; font-weight: 600; margin: 1.5em 0 .5em; word-break: break-all; }
.row { display: flex; flex-wrap: wrap; gap: 10px; }
figure { margin: 0; width: 210px; }
figure .frame { width: 204px; height: 204px; display: flex; align-items: center; justify-content: center;
  background: #f3f3f3; border: 3px solid transparent; }
figure.query .frame { border-color: #2a5bd7; }
figure.missing .frame { border-color: #c81e1e; color: #c81e1e; font-weight: 600; }
img { max-width: 200px; max-height: 200px; }
figure.explained { width: 416px; }
figure.explained .frame { width: 410px; height: auto; }
figure.explained img { max-width: 400px; max-height: none; }
figcaption { font-size: .8em; line-height: 1.3; word-break: break-all; }
.details { color: #666; }
"""


def _page(title: str, sections: list[tuple[str, list[Card]]]) -> str:
    body = []
    for heading, cards in sections:
        body.append(f"<section><h2>{html.escape(heading)}</h2><div class='row'>")
        body.extend(_card(card) for card in cards)
        body.append("</div></section>")
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{''.join(body)}</body></html>\n"
    )


def _card(card: Card) -> str:
    uri = card.picture_uri or thumbnail_uri(card.path, time_s=card.time)
    classes = ["query"] if card.is_query else []
    if card.picture_uri:
        classes.append("explained")
    if uri is None:
        classes.append("missing")
        state = "missing" if not os.path.exists(card.path) else "unreadable"
        picture = f"<span>{state}</span>"
    else:
        picture = f"<img src='{uri}' alt='{html.escape(short_name(card.path), quote=True)}'>"
    # A media fragment: a browser opening the video starts it at the frame's time.
    fragment = f"#t={card.time:.3f}" if card.time is not None else ""
    link = html.escape(Path(os.path.abspath(card.path)).as_uri() + fragment, quote=True)
    caption = (card.caption + "<br>" if card.caption else "") + html.escape(describe_frame(short_name(card.path), card.time))
    if card.details:
        caption += f"<br><span class='details'>{card.details}</span>"
    return (
        f"<figure class='{' '.join(classes)}' title='{html.escape(display_path(card.path), quote=True)}'>"
        f"<a class='frame' href='{link}'>{picture}</a><figcaption>{caption}</figcaption></figure>"
    )
