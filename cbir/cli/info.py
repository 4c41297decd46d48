"""``cbir info`` and ``cbir list``: describe indexes."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cbir.cli._common import (
    IndexDirOption,
    JsonOption,
    handle_errors,
    print_json,
    stderr,
)


@handle_errors
def info(
    name: Annotated[str, typer.Argument(help="Name of the index.", show_default=False)],
    index_dir: IndexDirOption = None,
    skipped: Annotated[int, typer.Option("--skipped", min=0, help="List up to this many skipped files with their reasons.")] = 10,
    as_json: JsonOption = False,
) -> None:
    """Describe an index: extractor config, dimension, index type, counts, versions."""
    from cbir.store import IndexStore, index_path

    with IndexStore.open(index_path(name, index_dir)) as store:
        data = _index_description(store)
        data["skipped_files"] = [{"path": p, "reason": r} for p, r in store.catalogue.skipped(limit=skipped)]
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
    print(f"images      {data['images']}")
    print(f"skipped     {data['skipped']}")
    print(f"created     {data['created']}")
    print("versions    " + ", ".join(f"{k} {v}" for k, v in data["versions"].items()))
    if not data["vectors_current"]:
        print("note        the vector file is behind the catalogue (interrupted run?); queries still see every committed image")
    for entry in data["skipped_files"]:
        print(f"  skipped: {entry['path']}: {entry['reason']}")


@handle_errors
def list_command(index_dir: IndexDirOption = None, as_json: JsonOption = False) -> None:
    """List the indexes in the index directory."""
    from cbir.errors import CbirError
    from cbir.store import IndexStore, default_index_dir, list_indexes

    rows = []
    for path in list_indexes(index_dir):
        try:
            with IndexStore.open(path) as store:
                rows.append(_index_description(store))
        except CbirError as exc:
            rows.append({"name": path.name, "path": str(path.resolve()), "error": str(exc)})
    if as_json:
        print_json(rows)
        return
    if not rows:
        stderr.print(f"no indexes in {index_dir or default_index_dir()}", markup=False)
        return
    for row in rows:
        if "error" in row:
            print(f"{row['name']:<20} unusable: {row['error']}")
        else:
            print(f"{row['name']:<20} {row['images']:>8} images  {row['extractor']}  [{row['index_type']}]")


def _index_description(store) -> dict[str, Any]:
    from cbir.features.pipeline import Embedder

    manifest = store.manifest
    return {
        "name": store.name,
        "path": str(store.path.resolve()),
        "extractor": Embedder.from_config(manifest["embedder"]).describe(),
        "embedder": manifest["embedder"],
        "dim": manifest["dim"],
        "metric": manifest["metric"],
        "index_type": manifest.get("index_type", manifest["factory"]),
        "factory": manifest["factory"],
        # The FAISS file in force: differs from the manifest's while a rebuild is due.
        "vectors_factory": store.snapshot_factory(),
        "images": store.catalogue.count_images(),
        "skipped": store.catalogue.count_skipped(),
        "created": manifest.get("created"),
        "versions": manifest.get("versions", {}),
        "vectors_current": store.vectors_are_current(),
    }
