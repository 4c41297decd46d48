"""Files whose content an index already holds (moved, copied): their stored entries instead of a decode.

A photo gets its stored vector and metadata; a video all the frames of one
indexed copy, with their times. No decoding, no model.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from cbir.compute.loader import Loader
from cbir.compute.work import KnownContent, LoadedFile
from cbir.features.pipeline import Embedder
from cbir.store.catalogue import ImageMetadata
from cbir.store.writer import IndexWriter


def reuse_stored_entries(
    writer: IndexWriter,
    embedder: Embedder,
    known: KnownContent | None,
    ok: list,
    vectors: np.ndarray,
    not_embedded: list,
    local: dict | None = None,
    video: dict | None = None,
) -> tuple[list[LoadedFile], np.ndarray, list[LoadedFile], int, dict[tuple[Path, float | None], ImageMetadata]]:
    """Give files whose content the index already holds that content's stored entries: vector and metadata
    (no decoding, no model; a video all the frames of one copy), and local features where the run keeps them."""
    reusable = [f for f in not_embedded if f.reusable]
    if not reusable:
        return ok, vectors, not_embedded, 0, {}
    candidates = sorted({i for f in reusable for i in known.candidate_ids(f.sha256)})
    entries_of: dict[str, list] = {}  # by hash: the rows of one file holding it (a video: its frames, in time order)
    for row in writer.rows_by_id(candidates):
        rows = entries_of.setdefault(row.sha256, [])
        if not rows or rows[0].path == row.path:
            rows.append(row)
    for rows in entries_of.values():
        rows.sort(key=lambda row: -1.0 if row.time is None else row.time)
    found = [f for f in reusable if f.sha256 in entries_of]
    extra_ok: list[LoadedFile] = []
    source_ids: list[int] = []
    for f in found:
        rows = entries_of[f.sha256]
        for n, row in enumerate(rows):
            extra_ok.append(dataclasses.replace(f, frame_time=-1.0 if row.time is None else row.time, more_frames=n < len(rows) - 1))
            source_ids.append(row.id)
    stored = writer.stored_vectors(source_ids)
    stored_metadata = writer.stored_metadata(source_ids)
    copied = {
        (entry.path, entry.frame_time if entry.frame_time >= 0 else None): stored_metadata[i]
        for entry, i in zip(extra_ok, source_ids)
        if i in stored_metadata
    }
    if local:
        features = writer.stored_local_features(source_ids)
        for entry, i in zip(extra_ok, source_ids):
            entry.local_features = features.get(i)
    extra_vectors = [stored]
    rest = [f for f in not_embedded if not f.reusable]
    collided = [f.path for f in reusable if f.sha256 not in entries_of]
    if collided:  # a 64-bit prefix that matched another hash: rare; embed those files here, the same way
        for batch in Loader(1, explicit=True, batch_size=len(collided)).embed_batches(collided, embedder, local=local, video=video):
            extra_ok.extend(batch.embedded)
            extra_vectors.append(batch.vectors)
            rest.extend(batch.not_embedded)
    all_vectors = np.concatenate([vectors.reshape(-1, writer.dim), *(v.reshape(-1, writer.dim) for v in extra_vectors)])
    return ok + extra_ok, all_vectors, rest, len(source_ids), copied
