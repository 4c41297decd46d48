"""Compare configurations on one labelled folder: index it once per configuration, evaluate, time.

A spec is a JSON file (or the same mapping from Python)::

    {
      "folder": "photos/",                 # relative to the spec's folder
      "labels": "labels.csv",              # optional; default: folder names
      "queries": 50,                       # optional: images timed as one-off queries
      "configs": [
        {"name": "colour"},
        {"name": "mobilenet", "backbone": "mobilenet", "weights": "mobilenet.weights.h5"},
        {"name": "mobilenet-pca64", "backbone": "mobilenet", "weights": "mobilenet.weights.h5", "pca": 64},
        {"name": "rerank", "backbone": "mobilenet", "weights": "mobilenet.weights.h5", "dba": 2, "expand": 2},
        {"name": "diffused", "backbone": "mobilenet", "weights": "mobilenet.weights.h5", "diffusion": 20}
      ]
    }

A config takes the options of ``cbir index`` by their Python names
(``extractor``, ``backbone``, ``bins``, ``pca``, ``index_type``, ``dba``...;
see :class:`cbir.features.pipeline.EmbedderOptions`, whose keys every
extractor's declared parameters make) and ``expand`` / ``alpha`` / ``diffusion`` (the
graph's neighbours, ``cbir query --diffusion``; docs/rerank.md says when it pays) for queries;
any other key is refused; ``"dba": null`` / ``"expand": null`` turn re-ranking
off, a missing key keeps the default. Each configuration gets its own index
under ``work_dir``; quality is measured leave-one-out, query latency as the
median time of :meth:`cbir.retrieval.search.Searcher.query` (decode, embed, search,
expansion) over the first ``queries`` images, size as the bytes of the index
folder.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from cbir.errors import UsageError
from cbir.evaluation.metrics import EvaluationReport
from cbir.features.base import declared_parameters
from cbir.features.pipeline import EmbedderOptions
from cbir.progress import SILENT, Progress
from cbir.ann.rerank import DEFAULT_ALPHA, DEFAULT_EXPAND
from cbir.retrieval.diffused import check_diffusion

#: Keys of a config besides the embedder's (:meth:`EmbedderOptions.keys`, derived from the extractors).
_RUN_KEYS = {"name", "index_type", "dba", "dba_alpha", "expand", "alpha", "diffusion"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class BenchmarkRow:
    """What one configuration gave."""

    name: str
    description: str
    map: float
    precision_at_10: float
    ns_score: float | None
    n_queries: int
    index_seconds: float
    query_ms: float
    size_mb: float
    report: EvaluationReport | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("report")
        return {key: (round(value, 4) if isinstance(value, float) else value) for key, value in data.items()}


def load_spec(path: str | os.PathLike) -> dict[str, Any]:
    """Read a JSON spec, resolving its relative paths against the spec's folder; check its shape."""
    path = Path(path)
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read benchmark spec {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"benchmark spec {path} is not valid JSON: {exc}") from None
    return check_spec(spec, base=path.resolve().parent)


def check_spec(spec: Any, base: Path | None = None) -> dict[str, Any]:
    """Validate a spec mapping (see the module docstring); paths relative to ``base`` (default: cwd)."""
    base = base or Path.cwd()
    if not isinstance(spec, Mapping) or "folder" not in spec or not isinstance(spec.get("configs"), list):
        raise UsageError('a benchmark spec needs "folder" and a list of "configs"')
    if not spec["configs"]:
        raise UsageError("the benchmark spec lists no configs")
    unknown = set(spec) - {"folder", "labels", "queries", "configs"}
    if unknown:
        raise UsageError(f"unknown key(s) in the benchmark spec: {', '.join(sorted(unknown))}")
    resolve = lambda p: str(p if os.path.isabs(os.path.expanduser(p)) else base / p)  # noqa: E731
    checked = {**spec, "folder": resolve(spec["folder"]), "configs": []}
    if spec.get("labels"):
        checked["labels"] = resolve(spec["labels"])
    names = set()
    for n, config in enumerate(spec["configs"], start=1):
        if not isinstance(config, Mapping) or not isinstance(config.get("name"), str) or not _NAME.match(config["name"]):
            raise UsageError(f"config {n} needs a \"name\" made of letters, digits, '-', '_' or '.'")
        if config["name"] in names:
            raise UsageError(f"two configs are named {config['name']!r}")
        names.add(config["name"])
        unknown = set(config) - config_keys()
        if unknown:
            raise UsageError(
                f"config {config['name']!r}: unknown key(s) {', '.join(sorted(unknown))}; "
                f"a config takes {', '.join(sorted(config_keys()))}"
            )
        try:  # checked before any config is indexed: a bad value costs no run
            check_diffusion(config.get("diffusion"))
        except (TypeError, UsageError) as exc:
            raise UsageError(f"config {config['name']!r}: {exc}") from None
        config = dict(config)
        for key, words in _path_keys().items():
            if isinstance(config.get(key), str) and config[key] not in words:
                config[key] = resolve(config[key])
        checked["configs"].append(config)
    if not Path(checked["folder"]).is_dir():
        raise UsageError(f"benchmark folder {checked['folder']} does not exist")
    return checked


def select_configs(checked: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """The checked spec with only the configs ``names`` (in the spec's order); all of them if ``names`` is empty."""
    if not names:
        return checked
    known = [config["name"] for config in checked["configs"]]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise UsageError(f"the spec has no config named {', '.join(map(repr, unknown))}; it has {', '.join(known)}")
    return {**checked, "configs": [config for config in checked["configs"] if config["name"] in names]}


def config_keys() -> set[str]:
    """What a config may set: how it runs and the options of :class:`EmbedderOptions`."""
    return _RUN_KEYS | set(EmbedderOptions.keys())


def _path_keys() -> dict[str, tuple]:
    """Keys holding a file path, resolved against the spec's folder -> the words that are not paths."""
    keys = {"model": ()}
    for name, declared in declared_parameters().items():
        if any(param.path for _, param in declared):
            keys[name] = tuple(word for _, param in declared for word in param.choices)
    return keys


def run_benchmark(spec: Mapping[str, Any], work_dir: str | os.PathLike, progress: Progress = SILENT) -> list[BenchmarkRow]:
    """Index ``spec["folder"]`` once per config into ``work_dir`` and measure each (see the module docstring).

    An index already in ``work_dir`` under a config's name is rebuilt.
    """
    import shutil

    from cbir.evaluation.protocols import evaluate_index
    from cbir.images.scan import find_images
    from cbir.indexing.run import index_folder
    from cbir.retrieval.search import Searcher

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    files = find_images(spec["folder"])
    if not files:
        raise UsageError(f"no images under {spec['folder']}")
    n_queries = int(spec.get("queries", 50))
    step = max(1, len(files) // max(1, n_queries))
    timed = files[::step][:n_queries]
    rows = []
    for config in spec["configs"]:
        name = config["name"]
        options = {key: value for key, value in config.items() if key not in _RUN_KEYS}
        dba = config["dba"] if "dba" in config else "keep"
        expand = config["expand"] if "expand" in config else DEFAULT_EXPAND
        alpha = float(config.get("alpha", DEFAULT_ALPHA))
        diffusion = config.get("diffusion")
        shutil.rmtree(work_dir / name, ignore_errors=True)
        started = time.perf_counter()
        index_folder(
            spec["folder"],
            name,
            work_dir,
            options=options,
            index_type=config.get("index_type"),
            labels=spec.get("labels"),
            dba=dba,
            dba_alpha=float(config.get("dba_alpha", alpha)),
            progress=progress,
        )
        index_seconds = time.perf_counter() - started
        report = evaluate_index(
            name, work_dir, labels=spec.get("labels"), expand=expand, alpha=alpha, diffusion=diffusion, progress=progress
        )
        with Searcher.open(name, work_dir, expand=expand, alpha=alpha, diffusion=diffusion) as searcher:
            searcher.query(timed[0], k=10)  # loads the model: not part of a query's latency
            latencies = []
            for path in timed:
                begin = time.perf_counter()
                searcher.query(path, k=10)
                latencies.append(time.perf_counter() - begin)
            description = searcher.embedder.describe()
            dba_config = searcher.store.manifest.get("dba")
        description += f", {config.get('index_type') or 'flat'}"
        description += f", DBA-{dba_config['k']}" if dba_config else ""
        description += f", αQE-{expand}" if expand else ""
        description += f", diffusion-{diffusion}" if diffusion else ""
        size = sum(p.stat().st_size for p in (work_dir / name).rglob("*") if p.is_file())
        rows.append(
            BenchmarkRow(
                name=name,
                description=description,
                map=report.map,
                precision_at_10=report.precision.get(10, 0.0),
                ns_score=report.ns_score,
                n_queries=report.n_queries,
                index_seconds=index_seconds,
                query_ms=1000 * statistics.median(latencies),
                size_mb=size / 1e6,
                report=report,
            )
        )
    return rows
