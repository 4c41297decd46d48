"""Load on ``cbir serve``: HTTP throughput and latency against in-process ``Searcher.query``.

Starts ``cbir serve`` on a free loopback port (never any other address), then
1, 8 and 32 concurrent clients (threads with keep-alive connections) post
Corel-1k images, each level for ``--duration`` seconds or ``--max-requests``
requests, whichever comes first. Prints per level: queries/s, p50/p99
latency, errors; the server's RSS at start (after a warm-up) and at the end;
the server's CPU time per request, and how much of it is above the query's
own; and, measured first in the same run on the same images, ``Searcher.query``
on the image bytes in as many threads as the level has clients (the
reference each HTTP figure is a ratio of; one thread too).

Then, with one client and with 8, the same plain upload beside a search
kept to one label (``?label=``, a tenth of Corel-1k) and a search with three
uploaded examples: their latency as a ratio of the plain one's.

    python benchmarks/serve_load.py --extractor color [--json]
    python benchmarks/serve_load.py --extractor mobilenet [--json]      # the shared MobileNet weights
    python benchmarks/serve_load.py --index-dir DIR --name NAME          # an existing index

Targets (issues 13 and 25): colour index, 8 clients >= 0.8x in-process with 8
threads, p99 < 30 ms, at most 1 ms of server CPU per request above the query's,
no errors, RSS growth < 10% over 10,000 requests; MobileNet index, 8 clients
>= 0.8x in-process; a filtered search and one of three examples within 1.5x
of a plain one. Serialise speed runs: ``flock /tmp/cbir-bench.lock python ...``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _corel import COREL_LABELS, MOBILENET_WEIGHTS, REPO, corel_files  # noqa: E402

from cbir.retrieval.search import Searcher  # noqa: E402

LOOPBACK = "127.0.0.1"
BOUNDARY = "cbir-load-boundary"
TARGETS = {
    "color": {"ratio": 0.8, "p99_ms": 30.0, "rss_growth": 0.10, "cpu_above_query_ms": 1.0, "variant_ratio": 1.5},
    "cnn": {"ratio": 0.8, "variant_ratio": 1.5},
}
#: The label a filtered search keeps to (a tenth of Corel-1k).
FILTER_LABEL = "beach"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def build_index(extractor: str, folder: Path, index_dir: Path) -> str:
    name = f"corel-{extractor}"
    command = [sys.executable, "-m", "cbir", "index", str(folder), "--name", name, "--index-dir", str(index_dir)]
    if COREL_LABELS.is_file():  # the classes, for the filtered search
        command += ["--labels", str(COREL_LABELS)]
    if extractor == "color":
        command += ["--extractor", "color"]
    else:
        command += ["--extractor", "cnn", "--backbone", "mobilenet", "--weights", str(MOBILENET_WEIGHTS)]
    subprocess.run(command, check=True, env=_env(), stdout=subprocess.DEVNULL)
    return name


def in_process_throughput(searcher: Searcher, images: list[bytes], k: int, duration: float, threads: int = 1) -> dict:
    """``Searcher.query`` on image bytes in ``threads`` threads: queries/s, latency, CPU ms per query."""
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + duration

    def work(offset: int) -> None:
        n = offset
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            searcher.query(images[n % len(images)], k)
            with lock:
                latencies.append(time.perf_counter() - t0)
            n += threads

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    cpu, started = time.process_time(), time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    count = len(latencies)
    return {
        "threads": threads,
        "queries": count,
        "qps": round(count / elapsed, 1),
        "cpu_ms_per_query": round(1000 * cpu / max(count, 1), 2),
        **_percentiles(latencies),
    }


def in_process_references(name: str, index_dir: Path, images: list[bytes], k: int, duration: float, levels: list[int]) -> dict:
    """:func:`in_process_throughput` for one thread and for each level's number of clients (index opening excluded)."""
    with Searcher.open(name, index_dir) as searcher:
        for data in images[:20]:  # warm-up: model first call, caches
            searcher.query(data, k)
        extractor = searcher.store.manifest["embedder"]["extractor"]["name"]
        by_threads = {threads: in_process_throughput(searcher, images, k, duration, threads) for threads in sorted({1, *levels})}
    return {"extractor": extractor, "by_threads": by_threads}


class ServerProcess:
    def __init__(self, name: str, index_dir: Path):
        command = [sys.executable, "-m", "cbir", "serve", "--index-dir", str(index_dir), "--name", name, "--host", LOOPBACK, "--port", "0"]
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=_env())
        self.log: list[str] = []
        ready = threading.Event()

        def drain() -> None:
            for line in self.process.stderr:
                self.log.append(line)
                if line.startswith("serving "):
                    ready.set()
            ready.set()

        threading.Thread(target=drain, daemon=True).start()
        if not ready.wait(300) or self.process.poll() is not None:
            self.stop()
            raise SystemExit("cbir serve did not start:\n" + "".join(self.log))
        address = next(word for word in self.log[-1].split() if word.startswith("http://"))
        host, port = address[len("http://") :].rstrip("/").rsplit(":", 1)
        if host != LOOPBACK:
            self.stop()
            raise SystemExit(f"refusing to load anything but loopback, got {host}")
        self.port = int(port)

    def rss_mb(self) -> float | None:
        try:
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def cpu_seconds(self) -> float | None:
        """User + system CPU time the server process has used so far."""
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()


def multipart(data: bytes, filename: str, *more: tuple[bytes, str]) -> bytes:
    """A form with one ``file`` field per image: ``data`` and any ``more`` (bytes, filename) pairs."""
    parts = []
    for content, name in [(data, filename), *more]:
        head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\nContent-Type: image/jpeg\r\n\r\n'
        parts.append(head.encode() + content + b"\r\n")
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def load(port: int, path: str, bodies: list[bytes], clients: int, duration: float, max_requests: int) -> dict:
    """``clients`` threads posting for ``duration`` s or ``max_requests`` requests in all."""
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    latencies: list[float] = []
    errors: list[str] = []
    issued = 0
    lock = threading.Lock()
    deadline = time.perf_counter() + duration

    def client(offset: int) -> None:
        nonlocal issued
        connection = http.client.HTTPConnection(LOOPBACK, port, timeout=60)
        n = offset
        while time.perf_counter() < deadline:
            with lock:
                if issued >= max_requests:
                    break
                issued += 1
            body = bodies[n % len(bodies)]
            n += clients
            t0 = time.perf_counter()
            try:
                connection.request("POST", path, body=body, headers=headers)
                response = connection.getresponse()
                payload = response.read()
                ok = response.status == 200
                problem = None if ok else f"{response.status} {payload[:200]!r}"
            except (OSError, http.client.HTTPException) as exc:
                problem = f"{type(exc).__name__}: {exc}"
                connection.close()
                connection = http.client.HTTPConnection(LOOPBACK, port, timeout=60)
            elapsed = time.perf_counter() - t0
            with lock:
                if problem is None:
                    latencies.append(elapsed)
                else:
                    errors.append(problem)
        connection.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    return {
        "clients": clients,
        "requests": len(latencies) + len(errors),
        "qps": len(latencies) / elapsed,
        "errors": len(errors),
        "first_errors": errors[:3],
        **_percentiles(latencies),
    }


def _percentiles(latencies: list[float]) -> dict:
    if not latencies:
        return {"p50_ms": None, "p99_ms": None}
    ordered = sorted(latencies)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000  # noqa: E731
    return {"p50_ms": round(pick(0.50), 2), "p99_ms": round(pick(0.99), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--extractor", choices=["color", "mobilenet"], default="color", help="build a Corel-1k index of this kind")
    parser.add_argument("--index-dir", type=Path, help="use an existing index in this folder (with --name)")
    parser.add_argument("--name", help="the existing index to load")
    parser.add_argument("--clients", default="1,8,32", help="concurrency levels, comma-separated")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per level")
    parser.add_argument("--max-requests", type=int, default=20_000, help="most requests per level")
    parser.add_argument("--reference-seconds", type=float, default=10.0, help="seconds of in-process queries, per thread count")
    parser.add_argument("--variant-seconds", type=float, default=8.0, help="seconds of each kind of search (plain, filtered, three examples)")
    parser.add_argument("--label", default=FILTER_LABEL, help="the label the filtered search keeps to")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if (args.index_dir is None) != (args.name is None):
        parser.error("--index-dir and --name go together")

    files = corel_files()
    images = [path.read_bytes() for path in files]
    bodies = [multipart(data, path.name) for data, path in zip(images, files)]
    n = len(images)
    triples = [multipart(images[i], files[i].name, (images[(i + 1) % n], files[(i + 1) % n].name), (images[(i + 2) % n], files[(i + 2) % n].name))
               for i in range(n)]
    clients = [int(c) for c in args.clients.split(",")]
    with tempfile.TemporaryDirectory(prefix="cbir-serve-load-") as work:
        index_dir, name = args.index_dir, args.name
        if name is None:
            index_dir = Path(work)
            name = build_index("color" if args.extractor == "color" else "cnn", files[0].parent, index_dir)
        reference = in_process_references(name, index_dir, images, args.k, args.reference_seconds, clients)
        server = ServerProcess(name, index_dir)
        try:
            rss_ready = server.rss_mb()
            path = f"/api/indexes/{name}/search?k={args.k}"
            warmup = load(server.port, path, bodies, 4, 30.0, 200)
            rss_start = server.rss_mb()
            levels = [measured(server, path, bodies, level, args.duration, args.max_requests) for level in clients]
            rss_end = server.rss_mb()
            variants = {}
            for level in (1, 8):
                variants[level] = {
                    "plain": measured(server, path, bodies, level, args.variant_seconds, args.max_requests),
                    "filtered": measured(server, f"{path}&label={args.label}", bodies, level, args.variant_seconds, args.max_requests),
                    "three_examples": measured(server, path, triples, level, args.variant_seconds, args.max_requests),
                }
        finally:
            server.stop()
    total = sum(level["requests"] for level in levels)
    by_threads = reference["by_threads"]
    for level in levels:
        same = by_threads[level["clients"]]
        level["ratio_to_in_process"] = round(level["qps"] / same["qps"], 3)  # as many threads as clients
        level["ratio_to_one_thread"] = round(level["qps"] / by_threads[1]["qps"], 3)
        if "server_cpu_ms_per_request" in level:
            level["server_cpu_above_query_ms"] = round(level["server_cpu_ms_per_request"] - same["cpu_ms_per_query"], 2)
        level["qps"] = round(level["qps"], 1)
    for kinds in variants.values():
        plain = kinds["plain"]
        for kind in kinds.values():
            kind["p50_ratio_to_plain"] = round(kind["p50_ms"] / plain["p50_ms"], 2) if kind["p50_ms"] and plain["p50_ms"] else None
            kind["qps_ratio_to_plain"] = round(kind["qps"] / plain["qps"], 2) if plain["qps"] else None
            kind["qps"] = round(kind["qps"], 1)
    kind = "color" if reference["extractor"] == "color" else "cnn"
    figures = {
        "index": name,
        "extractor": reference["extractor"],
        "k": args.k,
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg()[0],
        "in_process": reference,
        "http": levels,
        "variants": {"label": args.label, "by_clients": variants},
        "warmup_errors": warmup["errors"],
        "rss_mb": {"ready": rss_ready, "start": rss_start, "end": rss_end},
        "requests_measured": total,
        "rss_growth": None if not rss_start or not rss_end else round(rss_end / rss_start - 1, 4),
        "targets": TARGETS[kind],
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    _print(figures, levels, variants, total)


def measured(server: ServerProcess, path: str, bodies: list[bytes], clients: int, duration: float, max_requests: int) -> dict:
    """:func:`load`, with the server's CPU time per request."""
    cpu_before = server.cpu_seconds()
    level = load(server.port, path, bodies, clients, duration, max_requests)
    cpu_after = server.cpu_seconds()
    if cpu_before is not None and cpu_after is not None and level["requests"]:
        level["server_cpu_ms_per_request"] = round(1000 * (cpu_after - cpu_before) / level["requests"], 2)
    return level


def _print(figures: dict, levels: list[dict], variants: dict, total: int) -> None:
    print(f"index {figures['index']} ({figures['extractor']}), k={figures['k']}, {figures['cpu_count']} CPUs, load average {figures['load_average']:.2f}")
    print("in-process Searcher.query:")
    for threads, ref in figures["in_process"]["by_threads"].items():
        print(f"  {threads:>3} thread(s): {ref['qps']:.1f} q/s, p50 {ref['p50_ms']} ms, p99 {ref['p99_ms']} ms, CPU {ref['cpu_ms_per_query']} ms/query")
    print("over HTTP (ratio: to in-process with as many threads as clients; CPU above: server CPU/request minus in-process CPU/query)")
    print(f"{'clients':>7} {'requests':>9} {'q/s':>8} {'ratio':>6} {'1-thr':>6} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'CPU ms/req':>11} {'above':>6}")
    for level in levels:
        print(
            f"{level['clients']:>7} {level['requests']:>9} {level['qps']:>8.1f} {level['ratio_to_in_process']:>6.2f} "
            f"{level['ratio_to_one_thread']:>6.2f} {level['p50_ms']:>8} {level['p99_ms']:>8} {level['errors']:>6} "
            f"{level.get('server_cpu_ms_per_request', '-'):>11} {level.get('server_cpu_above_query_ms', '-'):>6}"
        )
        for problem in level["first_errors"]:
            print(f"        error: {problem}")
    print(f"plain, filtered (label {figures['variants']['label']!r}) and three-example searches:")
    for clients, kinds in variants.items():
        for kind, level in kinds.items():
            print(
                f"  {clients} client(s) {kind:<15} {level['qps']:>7.1f} q/s ({level['qps_ratio_to_plain']}x), p50 {level['p50_ms']} ms "
                f"({level['p50_ratio_to_plain']}x plain), p99 {level['p99_ms']} ms, errors {level['errors']}, "
                f"server CPU {level.get('server_cpu_ms_per_request', '-')} ms/req"
            )
    rss = figures["rss_mb"]
    print(f"server RSS: {rss['ready']:.0f} MB ready, {rss['start']:.0f} MB after warm-up, {rss['end']:.0f} MB after {total} requests "
          f"({figures['rss_growth']:+.1%})")
    print(f"targets: {figures['targets']}")


if __name__ == "__main__":
    main()
