"""Why an unverified match was found: each one's image read again and its regions compared with the query vector.

:mod:`cbir.features.contributions` does the maths; this module reads each
match's file (only while it is still the file indexed, as the server serves
them) at the extractor's decode size and runs the model under the searcher's
lock. A match whose file is gone or unreadable is left without a region.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from cbir.errors import CbirError
from cbir.features.contributions import region_map
from cbir.images.decode import decode_image


def with_regions(result, embedder, model_lock, open_file: Callable, limit: int):
    """``result`` with ``region`` set on its first ``limit`` matches that are not verified."""
    if result.vector is None:
        return result
    explained = []
    for n, match in enumerate(result.results):
        if n < limit and not match.verified:
            try:
                _, file = open_file(match.id)
                with file:
                    image = decode_image(file.read(), min_side=embedder.decode_min_side)
            except (CbirError, OSError):
                explained.append(match)
                continue
            with model_lock:
                match = replace(match, region=region_map(embedder, image, result.vector))
        explained.append(match)
    return replace(result, results=explained)


def correspondence_rows(pairs, most: int = 40) -> list[list[float]]:
    """A verified match's inlier pairs as JSON rows ``[query x, query y, match x, match y]`` (fractions of
    each image's longer side), at most ``most`` evenly chosen (as the pictures draw them)."""
    import numpy as np

    query_xy, match_xy = (np.asarray(a, np.float64) for a in pairs)
    shown = np.linspace(0, len(query_xy) - 1, min(len(query_xy), most)).astype(int) if len(query_xy) else []
    return [[round(float(v), 4) for v in (*query_xy[i], *match_xy[i])] for i in shown]
