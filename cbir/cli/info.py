"""``cbir info`` and ``cbir list``: describe indexes."""

from __future__ import annotations

from typing import Annotated

import typer

from cbir.cli._common import (
    IndexDirOption,
    JsonOption,
    NameArgument,
    OptionalNameOption,
    handle_errors,
    pick_name,
    print_json,
    show,
    stderr,
)


@handle_errors
def info(
    name_argument: NameArgument = None,
    name: OptionalNameOption = None,
    index_dir: IndexDirOption = None,
    skipped: Annotated[int, typer.Option("--skipped", min=0, help="List up to this many skipped files with their reasons.")] = 10,
    as_json: JsonOption = False,
) -> None:
    """Describe an index: extractor config, dimension, index type, counts, versions."""
    from cbir.store.directory import IndexStore
    from cbir.store.locations import index_path

    name = pick_name(name_argument, name)
    with IndexStore.open(index_path(name, index_dir)) as store:
        data = store.describe()
        data["skipped_files"] = [{"path": p, "reason": r} for p, r in store.catalogue.skipped(limit=skipped)]
        data["metadata"] = store.catalogue.metadata_counts()
    if as_json:
        print_json(data)
        return
    print(f"name        {data['name']}")
    print(f"path        {data['path']}")
    print(f"extractor   {data['extractor']}")
    print(f"dimension   {data['dim']} ({data['metric']})")
    print(f"index type  {data['index_type']} (FAISS {data['factory']})")
    if data["vectors_factory"] not in (None, data["factory"]):
        print(f"note        the vector file in force is a {data['vectors_factory']} index (a rebuild is due, or the collection is still too small to train)")
    print(f"images      {data['images']}" + (f" ({data['frames']} frames of {data['videos']} video(s))" if data.get("videos") else ""))
    print(f"skipped     {data['skipped']}")
    meta = data["metadata"]
    print(
        f"metadata    {meta['with_metadata']} of {data['images']} images: {meta['dated_by_exif']} dated by EXIF ({meta['with_metadata'] - meta['dated_by_exif']} by file time), "
        f"{meta['with_camera']} with a camera, {meta['with_location']} with a location"
        + (f"; {data['images'] - meta['with_metadata']} indexed before metadata was kept (the next cbir index of their folder reads it; nothing is re-embedded)" if data["images"] > meta["with_metadata"] else "")
    )
    print(f"created     {data['created']}")
    print("versions    " + ", ".join(f"{k} {v}" for k, v in data["versions"].items()))
    if not data["vectors_current"]:
        print("note        the vector file is behind the catalogue (interrupted run?); queries still see every committed image")
    if data["removed_paths"]:
        print(f"removed     {len(data['removed_paths'])} path(s) left out of updates (cbir index --include-removed adds them back)")
    for entry in data["skipped_files"]:
        print(f"  skipped: {show(entry['path'])}: {show(entry['reason'])}")


@handle_errors
def list_command(
    name_argument: NameArgument = None,
    name: OptionalNameOption = None,
    index_dir: IndexDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """List the indexes in the index directory (or just the one named)."""
    from cbir.errors import CbirError, IndexNotFoundError
    from cbir.store.directory import IndexStore, list_indexes, not_found_message
    from cbir.store.locations import index_path, resolve_index_dir

    name = pick_name(name_argument, name, required=False)
    paths = list_indexes(index_dir)
    if name is not None:
        wanted = index_path(name, index_dir)
        paths = [p for p in paths if p.name == wanted.name]
        if not paths:
            raise IndexNotFoundError(not_found_message(wanted))
    rows = []
    for path in paths:
        try:
            with IndexStore.open(path) as store:
                rows.append(store.describe())
        except CbirError as exc:
            rows.append({"name": path.name, "path": str(path.resolve()), "error": str(exc)})
    if as_json:
        print_json(rows)
        return
    if not rows:
        stderr.print(f"no indexes in {resolve_index_dir(index_dir)}", markup=False)
        return
    for row in rows:
        if "error" in row:
            print(f"{row['name']:<20} unusable: {row['error']}")
        else:
            print(f"{row['name']:<20} {row['images']:>8} images  {row['extractor']}  [{row['index_type']}]")
