"""Load test of `fgia serve`: N concurrent clients POST /search on loopback for a bounded time.

Reports requests/s, p50/p90/p99 latency and errors, and writes JSON + Markdown under benchmarks/results/. With
INDEX_DIR, the same engine's offline batched throughput (`engine.search` on batches of the server's batch size,
the same query images, before the server starts) is measured too: `served_ratio` = served requests/s / that
(target >= 0.7), with `p99_over_p50` (< 3) and `errors` (0) as the other targets.

    python benchmarks/serve_load.py INDEX_DIR --clients 16 --duration 30     # starts `python -m fgia.serve`
    python benchmarks/serve_load.py --url http://127.0.0.1:8000 --clients 16  # an already running server
    python benchmarks/serve_load.py INDEX_DIR --bombs 6   # decode bombs: peak server memory, every answer

With `--bombs N`, N clients upload a 6300 x 6300 16-bit greyscale PNG (77 KB, under the pixel limit, 79 MB of
pixels) at the same moment; the server's peak RSS above its RSS just before (Linux VmHWM, reset through
/proc/PID/clear_refs) is the `bomb_rss_mb` target, and every upload must get an answer (200, or a JSON 413/503).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import shlex
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from fgia.runtime import pick_device
from fgia.serve import ServeConfig
from fgia.serve.server import serve_subprocess

RESULTS = Path(__file__).parent / "results"
BOMB_SIDE = 6300
BOMB_RSS_LIMIT_MB = 600


@dataclass
class LoadConfig:
    clients: int = 16
    duration_s: float = 30.0
    top_k: int = 10
    pipeline: str = "c2f"
    query_expansion: bool = False
    queries: int = 8  # distinct query images, fetched from the database via /images/{id}
    device: str = "auto"
    batching: str = "on"


def fetch_queries(url: str, n: int) -> list[tuple[str, bytes, str]]:
    """The first `n` database images (by id) as (name, bytes, content type) uploads."""
    index_size = httpx.get(f"{url}/stats", timeout=10).json().get("images", n)
    out = []
    for i in np.linspace(0, max(index_size - 1, 0), num=min(n, index_size), dtype=int).tolist():
        resp = httpx.get(f"{url}/images/{i}", timeout=10)
        resp.raise_for_status()
        out.append((f"query{i}", resp.content, resp.headers["content-type"].split(";")[0]))
    if not out:
        raise RuntimeError("the server's database is empty; nothing to query with")
    return out


async def client_loop(client: httpx.AsyncClient, url: str, cfg: LoadConfig, queries, offset: int, deadline: float,
                      latencies: list[float], errors: Counter) -> None:
    form = {"top_k": str(cfg.top_k), "pipeline": cfg.pipeline, "query_expansion": str(cfg.query_expansion).lower()}
    k = offset
    while time.perf_counter() < deadline:
        name, data, ctype = queries[k % len(queries)]
        k += 1
        started = time.perf_counter()
        try:
            resp = await client.post(f"{url}/search", files={"file": (name, data, ctype)}, data=form)
            if resp.status_code != 200:
                errors[f"HTTP {resp.status_code}"] += 1
                continue
        except httpx.HTTPError as exc:
            errors[type(exc).__name__] += 1
            continue
        latencies.append((time.perf_counter() - started) * 1000.0)


async def run_load(url: str, cfg: LoadConfig) -> dict:
    """Drive `cfg.clients` concurrent clients for `cfg.duration_s` seconds; return the measured numbers."""
    queries = fetch_queries(url, cfg.queries)
    latencies: list[float] = []
    errors: Counter = Counter()
    limits = httpx.Limits(max_connections=cfg.clients, max_keepalive_connections=cfg.clients)
    async with httpx.AsyncClient(timeout=120.0, limits=limits) as client:
        # Warm-up: one query per distinct image, not counted.
        for name, data, ctype in queries:
            (await client.post(f"{url}/search", files={"file": (name, data, ctype)})).raise_for_status()
        started = time.perf_counter()
        deadline = started + cfg.duration_s
        await asyncio.gather(*(client_loop(client, url, cfg, queries, i, deadline, latencies, errors)
                               for i in range(cfg.clients)))
        elapsed = time.perf_counter() - started
        server_stats = (await client.get(f"{url}/stats")).json()
    lat = np.asarray(latencies)
    pct = {f"p{q}_ms": round(float(np.percentile(lat, q)), 1) if lat.size else None for q in (50, 90, 99)}
    return {
        "requests": int(lat.size), "errors": sum(errors.values()), "error_kinds": dict(errors),
        "elapsed_s": round(elapsed, 2), "requests_per_s": round(lat.size / elapsed, 2), **pct,
        "p99_over_p50": round(pct["p99_ms"] / pct["p50_ms"], 2) if lat.size else None,
        "server_stats": server_stats,
    }


def offline_qps(index_dir: Path, queries: list[tuple[str, bytes, str]], batch: int, device: str,
                seconds: float) -> float:
    """Queries/s of the index's engine answering the query images in batches of `batch`, in this process."""
    from fgia.retrieval.engine import RetrievalEngine
    from fgia.serve.uploads import decode_upload

    engine = RetrievalEngine.load(index_dir, device=device)
    images = [decode_upload(data, ctype, 40_000_000, 160_000_000, 1024) for _, data, ctype in queries]
    images = (images * (batch // len(images) + 1))[:batch]
    engine.search(images)  # warm-up
    answered, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        answered += len(engine.search(images))
    return answered / (time.perf_counter() - started)


def bomb_png(side: int = BOMB_SIDE) -> bytes:
    """A `side` x `side` 16-bit greyscale PNG of one value: 77 KB for 6300 px, 2 bytes a pixel decoded."""
    buf = io.BytesIO()
    Image.new("I;16", (side, side), 1000).save(buf, format="PNG")
    return buf.getvalue()


def _memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of process `pid`, in kB."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in lines) if k in ("VmRSS", "VmHWM")}


async def run_bombs(url: str, pid: int, n: int) -> dict:
    """Upload `n` decode bombs at once; the server's peak RSS above its RSS before, and every answer."""
    data = bomb_png()
    async with httpx.AsyncClient(timeout=300.0) as client:
        name, query, ctype = fetch_queries(url, 1)[0]
        (await client.post(f"{url}/search", files={"file": (name, query, ctype)})).raise_for_status()  # warm-up
        before = _memory_kb(pid)["VmRSS"]
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM restarts from the current RSS
        started = time.perf_counter()
        responses = await asyncio.gather(*(client.post(f"{url}/search", files={"file": ("bomb.png", data, "image/png")})
                                           for _ in range(n)), return_exceptions=True)
        elapsed = time.perf_counter() - started
        server_stats = (await client.get(f"{url}/stats")).json()
    peak = _memory_kb(pid)["VmHWM"]
    answers = [r.status_code if isinstance(r, httpx.Response) else type(r).__name__ for r in responses]
    clear = [r for r in responses if isinstance(r, httpx.Response) and r.status_code in (413, 503)
             and r.headers.get("content-type", "").startswith("application/json")]
    answered = sum(a == 200 for a in answers) + len(clear)
    return {"bombs": n, "bomb_bytes": len(data), "bomb_pixels": f"{BOMB_SIDE}x{BOMB_SIDE} I;16",
            "rss_before_mb": round(before / 1024, 1), "peak_rss_mb": round(peak / 1024, 1),
            "bomb_rss_mb": round((peak - before) / 1024, 1), "answers": dict(Counter(map(str, answers))),
            "answered": answered, "elapsed_s": round(elapsed, 2), "server_stats": server_stats}


def write_bomb_report(result: dict, name: str) -> tuple[Path, Path]:
    """JSON (with the `bomb_rss_mb` target) and Markdown of a --bombs run."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    machine = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}
    targets = {
        "bomb_rss_mb": {"value": result["bomb_rss_mb"], "threshold": BOMB_RSS_LIMIT_MB, "op": "<=",
                        "met": result["bomb_rss_mb"] <= BOMB_RSS_LIMIT_MB},
        "bombs_answered": {"value": result["answered"], "threshold": result["bombs"], "op": ">=",
                           "met": result["answered"] >= result["bombs"]},
    }
    payload = {"targets": targets, "config": {"bombs": result["bombs"], "bomb": result["bomb_pixels"],
                                              "bomb_bytes": result["bomb_bytes"]},
               "machine": machine, **result}
    json_path, md_path = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    json_path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    s = result["server_stats"]
    limits = s.get("limits", {})
    md = [
        f"# fgia serve decode bombs ({name})", "",
        f"{result['bombs']} clients upload at once a {result['bomb_pixels']} PNG of {result['bomb_bytes']:,} bytes "
        f"(under the {limits.get('max_pixels', '?'):,} pixel limit; 79 MB of 16-bit pixels). Server: index of "
        f"{s.get('images', '?')} images, backbone {s.get('backbone', '?')} at {s.get('image_size', '?')} px, "
        f"{limits.get('decoding_at_once', '?')} uploads decoded or searched at once, decoded-bytes limit "
        f"{limits.get('max_decoded_bytes', 0) / 1e6:.0f} MB. Peak RSS = Linux VmHWM of the server process, reset "
        f"just before the uploads. Machine: {machine['cpus']} CPUs, {machine['platform']}.", "",
        "| bombs | answers | RSS before MB | peak RSS MB | rise MB (target <= 600) | seconds |",
        "|---:|---|---:|---:|---:|---:|",
        f"| {result['bombs']} | {result['answers']} | {result['rss_before_mb']} | {result['peak_rss_mb']} | "
        f"{result['bomb_rss_mb']} | {result['elapsed_s']} |", "",
        "Targets: " + "; ".join(f"{k} {v['value']} {v['op']} {v['threshold']} ({'met' if v['met'] else 'MISSED'})"
                                for k, v in targets.items()) + ".", "",
    ]
    md_path.write_text("\n".join(md))
    return json_path, md_path


def write_report(result: dict, cfg: LoadConfig, name: str) -> tuple[Path, Path]:
    """Write JSON and Markdown next to the other benchmark results."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    machine = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
               "load_avg_1m_after": round(os.getloadavg()[0], 2)}
    targets = {
        "errors": {"value": result["errors"], "threshold": 0, "op": "<=", "met": result["errors"] == 0},
        "p99_over_p50": {"value": result["p99_over_p50"], "threshold": 3.0, "op": "<=",
                         "met": result["p99_over_p50"] is not None and result["p99_over_p50"] < 3.0},
    }
    if result.get("offline_qps"):
        ratio = result["requests_per_s"] / result["offline_qps"]
        targets["served_ratio"] = {"value": round(ratio, 3), "threshold": 0.7, "op": ">=", "met": ratio >= 0.7}
    payload = {"targets": targets, "config": asdict(cfg), "machine": machine, **result}
    json_path, md_path = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    json_path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    s = result["server_stats"]
    md = [
        f"# fgia serve load test ({name})", "",
        f"{cfg.clients} concurrent clients on loopback for {cfg.duration_s:g} s, POST /search top_k={cfg.top_k}, "
        f"pipeline={cfg.pipeline}, query_expansion={cfg.query_expansion}; {cfg.queries} distinct query images "
        f"taken from the database. Server: index of {s.get('images', '?')} images, backbone {s.get('backbone', '?')} "
        f"at {s.get('image_size', '?')} px, coarse index {s.get('factory', '?')}, K={s.get('top_k', '?')}, device "
        f"{cfg.device}, batching max_batch={s.get('batching', {}).get('max_batch', '?')}. "
        f"Machine: {machine['cpus']} CPUs, {machine['platform']}, 1-min load average "
        f"{machine['load_avg_1m_after']} at the end (clients share the machine with the server and anything else).", "",
        "| requests | errors | req/s | p50 ms | p90 ms | p99 ms | p99/p50 |", "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {result['requests']} | {result['errors']} | {result['requests_per_s']} | {result['p50_ms']} | "
        f"{result['p90_ms']} | {result['p99_ms']} | {result['p99_over_p50']} |", "",
        "Targets: " + "; ".join(f"{k} {t['value']} {t['op']} {t['threshold']}: {'met' if t['met'] else 'MISSED'}"
                                for k, t in targets.items()) + (
            f" (offline batched throughput of the same engine: {result['offline_qps']:.2f} queries/s)"
            if result.get("offline_qps") else "") + ".", "",
        f"Command: `{result['command']}`", "",
    ]
    md_path.write_text("\n".join(md))
    return json_path, md_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("index_dir", nargs="?", type=Path, help="index to serve (omit with --url)")
    parser.add_argument("--url", help="load an already running server instead of starting one")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--pipeline", default="c2f")
    parser.add_argument("--query-expansion", action="store_true")
    parser.add_argument("--queries", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batching", choices=("on", "off"), default="on")
    parser.add_argument("--name", default=None, help="results file stem under benchmarks/results/ (default: "
                        "serve_load_<device>, or serve_load_bombs_<device> with --bombs)")
    parser.add_argument("--bombs", type=int, default=0, help="upload this many decode bombs at once instead")
    parser.add_argument("--pid", type=int, help="the server's process id, for --bombs with --url")
    args = parser.parse_args(argv)
    if (args.index_dir is None) == (args.url is None):
        parser.error("give either INDEX_DIR or --url")
    device_kind = "cuda" if pick_device(args.device).type == "cuda" else "cpu"  # what "auto" resolves to
    if args.bombs:
        if args.url and not args.pid:
            parser.error("--bombs with --url needs the server's --pid (its memory is measured)")
        name = args.name or f"serve_load_bombs_{device_kind}"
        if args.url:
            result = asyncio.run(run_bombs(args.url.rstrip("/"), args.pid, args.bombs))
        else:
            with serve_subprocess(args.index_dir, device=args.device, batching=args.batching,
                                  startup_timeout_s=300) as server:
                result = asyncio.run(run_bombs(server.url, server.pid, args.bombs))
        paths = write_bomb_report(result, name)
        print(json.dumps({k: v for k, v in result.items() if k != "server_stats"}, indent=2))
        print("wrote", *paths)
        return
    if args.clients < 1 or args.duration <= 0:
        parser.error("--clients must be >= 1 and --duration > 0")
    cfg = LoadConfig(clients=args.clients, duration_s=args.duration, top_k=args.top_k, pipeline=args.pipeline,
                     query_expansion=args.query_expansion, queries=args.queries, device=args.device,
                     batching=args.batching)
    if args.url:
        result = asyncio.run(run_load(args.url.rstrip("/"), cfg))
    else:
        with serve_subprocess(args.index_dir, device=cfg.device, batching=cfg.batching,
                              startup_timeout_s=300) as server:
            queries = fetch_queries(server.url, cfg.queries)
        batch = ServeConfig().max_batch if cfg.batching == "on" else 1
        offline = offline_qps(args.index_dir, queries, batch, cfg.device, 20.0)
        with serve_subprocess(args.index_dir, device=cfg.device, batching=cfg.batching,
                              startup_timeout_s=300) as server:
            result = asyncio.run(run_load(server.url, cfg))
        result["offline_qps"] = round(offline, 3)
    result["command"] = shlex.join(["python", "benchmarks/serve_load.py", *(sys.argv[1:] if argv is None else argv)])
    result["index_dir"] = str(args.index_dir) if args.index_dir else None
    paths = write_report(result, cfg, args.name or f"serve_load_{device_kind}")
    print(json.dumps({k: v for k, v in result.items() if k != "server_stats"}, indent=2))
    print("wrote", *paths)


if __name__ == "__main__":
    main()
