"""A request's search, run in the thread pool: one upload (batched with concurrent ones), an indexed
image's id, or several examples, and its answer as the API's JSON (links, explained regions, pages).

The routes in :mod:`cbir.server.app` parse; this module calls the library (:mod:`cbir.retrieval.search`)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from cbir.display import display_path
from cbir.errors import ImageError
from cbir.images.decode import decode_image
from cbir.server.access import private_path, public_path
from cbir.server.live import LiveIndex
from cbir.images.video import describe_frame
from cbir.server.queries import SearchRequest
from cbir.store.catalogue import ImageFilter
from cbir.timing import measuring, record, stage
from cbir.server.parameters import Limits, Page


def measured_search(*args) -> tuple[dict[str, Any], dict[str, float]]:
    """:func:`_search`, and the seconds it spent in each stage (:mod:`cbir.timing`) for the metrics."""
    with measuring() as clock:
        body = _search(*args)
    return body, clock.seconds


def requested_filter(searcher, filters: dict[str, str | None]) -> ImageFilter | None:
    """The filter a request asks for (:data:`FILTER_FIELDS`; a folder as results show it), or ``None``: the one
    place a search and a listing read it. A date that is not ISO: :class:`UsageError`, a 400."""
    filters = {key: value for key, value in filters.items() if value}
    if not filters:
        return None
    under = filters.get("under")
    folder = None if under is None else private_path(under.rstrip("/") or under, searcher.indexed_roots())
    return ImageFilter(**{**filters, "under": folder})


def _search(
    live: LiveIndex,
    asked: SearchRequest,
    page: Page,
    filters: dict,
    limits: Limits,
    show_paths: bool,
    verify: int | None = None,
    decoders: ThreadPoolExecutor | None = None,
    explain: bool = False,
) -> dict[str, Any]:
    """One request's search: the batched single upload, an id, or several examples, with ``filters`` (:data:`FILTER_FIELDS`).

    ``explain``: each unverified result gets its ``region`` (:meth:`Searcher.explain_regions`), each verified one its
    ``correspondences``; it verifies, as ``?verify`` does, where the index has local features.
    """
    with live.use() as searcher:
        only = requested_filter(searcher, filters)
        if explain and verify is None and searcher.store.manifest.get("local_features"):
            from cbir.ann.verify import DEFAULT_VERIFY

            verify = DEFAULT_VERIFY
    if asked.image_id is not None:
        return _search_id(live, asked.image_id, page, show_paths, only, verify, explain)
    if asked.single_upload:
        data, filename = asked.uploads[0]
        return _search_upload(live, data, filename, page, limits, show_paths, only, verify, explain)
    return _search_examples(live, asked, page, limits, show_paths, only, decoders, verify, explain)


def _search_examples(
    live: LiveIndex,
    asked: SearchRequest,
    page: Page,
    limits: Limits,
    show_paths: bool,
    only,
    decoders: ThreadPoolExecutor | None = None,
    verify: int | None = None,
    explain: bool = False,
) -> dict[str, Any]:
    from cbir.retrieval.examples import Example
    from cbir.retrieval.query_inputs import Prepared

    positives, negatives = asked.examples()
    with live.use() as shared:
        searcher = shared.verifying(verify)  # verified against each positive example
        uploads = [*asked.uploads, *asked.avoid_uploads]
        # The uploads decode and prepare side by side (OpenCV lets go of the GIL), this thread taking the first.
        others = [decoders.submit(_prepare_upload, searcher, data, name, limits) for data, name in uploads[1:]] if decoders else []
        ready = [_prepare_upload(searcher, data, name, limits) for data, name in (uploads[:1] if decoders else uploads)]
        ready += [future.result() for future in others]
        prepared = {}
        for (data, _), (item, seconds) in zip(uploads, ready):
            prepared[id(data)] = Prepared(item)
            record(seconds)
        as_items = lambda examples: [Example(prepared.get(id(e.source), e.source), e.weight) for e in examples]  # noqa: E731
        run = lambda n: searcher.query_examples(  # noqa: E731
            as_items(positives), as_items(negatives), n, image_filter=only, exclude_examples=True, name=asked.name()
        )
        body = _results(live, searcher, run, page, show_paths, only, explain)
        body["positive"] = [int(e.source) for e in asked.positive_ids]
        body["negative"] = [int(e.source) for e in asked.negative_ids]
        return body


def _prepare_upload(searcher, data: bytes, filename: str, limits: Limits):
    """One upload decoded and prepared for ``searcher``'s model, and the seconds of each stage (run in any thread)."""
    with measuring() as clock:
        try:
            with stage("decode"):
                image = decode_image(data, min_side=searcher.decode_min_side, max_pixels=limits.max_pixels)
        except ImageError as exc:
            raise ImageError(f"the upload {filename[:100]!r} cannot be used: {exc}") from None
        with stage("embed"):
            item = searcher.prepare(image)
    return item, clock.seconds


def _search_upload(
    live: LiveIndex,
    data: bytes,
    filename: str,
    page: Page,
    limits: Limits,
    show_paths: bool,
    only=None,
    verify: int | None = None,
    explain: bool = False,
) -> dict[str, Any]:
    with live.use() as shared:
        searcher = shared.verifying(verify)  # a view for this request: verified matches say so
        with live.batcher.preparing(searcher):
            item, seconds = _prepare_upload(searcher, data, filename, limits)
        record(seconds)
        return _results(live, searcher, lambda n: live.batcher.query(searcher, item, n, filename, only), page, show_paths, only, explain)


def _search_id(
    live: LiveIndex, image_id: int, page: Page, show_paths: bool, only=None, verify: int | None = None, explain: bool = False
) -> dict[str, Any]:
    with live.use() as shared:
        searcher = shared.verifying(verify)
        row = searcher.image_row(image_id)  # 404 before anything else
        body = _results(live, searcher, lambda n: searcher.query_id(image_id, n, image_filter=only), page, show_paths, only, explain)
        body["query_id"] = image_id
        body["query"] = describe_frame(row.path if show_paths else public_path(row.path, searcher.indexed_roots()), row.time)
        return body


def _results(live: LiveIndex, searcher, run, page: Page, show_paths: bool = True, only=None, explain: bool = False) -> dict[str, Any]:
    # k beyond the collection (or what the filter lets through) returns all of it, as a correct answer should;
    # a page past the end is empty. Ranks count from the first result of all, not of the page.
    matching = searcher.count_matching(only)
    effective = max(0, min(page.k, matching - page.offset))
    if effective == 0:
        return {"index": live.name, "query": None, "k": 0, "offset": page.offset, "results": [], "matching": matching}
    result = run(page.offset + effective)
    shown = result.results[page.offset :]
    if explain:  # the page's unverified results: their regions (one model call each, the first MAX_EXPLAINED)
        shown = searcher.explain_regions(replace(result, results=shown), MAX_EXPLAINED).results
    body = {"query": display_path(result.query, controls=False), "results": [match.to_dict() for match in shown]}
    add_links(body["results"], shown, f"/api/indexes/{live.name}", None if show_paths else searcher.indexed_roots())
    if explain:
        from cbir.retrieval.explained import correspondence_rows

        for item, match in zip(body["results"], shown):
            if match.correspondences is not None:
                item["correspondences"] = correspondence_rows(match.correspondences)
    return {"index": live.name, "k": len(shown), "offset": page.offset, "matching": matching, **body}


def add_links(items: list[dict], matches, base: str, roots) -> None:
    """Each result's id and the addresses of its file and thumbnail; paths shown relative to ``roots`` unless ``None``."""
    for item, match in zip(items, matches):
        item["id"] = match.id
        if roots is not None:
            item["path"] = public_path(match.path, roots)
            item["folder"] = public_path(match.folder, roots)
        item["image_url"] = f"{base}/images/{match.id}"
        item["thumbnail_url"] = f"{base}/thumbnails/{match.id}"


#: ``?explain`` draws regions for at most this many results of a search (a model call each).
MAX_EXPLAINED = 24

