"""``glueloc serve`` on a real database: the same answers as ``glueloc evaluate``, warm latency, and a load test.

1. **Same answers** (``--evaluate-json``): every query of ``--queries`` is posted once, in
   turn, to a service on ``--db``; each position is compared with the one ``glueloc
   evaluate --json`` recorded for it, and the warm latency per request is reported.
2. **Load** (``--clients``, ``--seconds``): that many clients post queries as fast as they
   are answered while, after ``--index-after`` seconds, an index run adds images to the
   database (``--add-csv``: a CSV of images the database does not hold yet, e.g. names
   retired before with ``glueloc remove``). Reported: requests served, errors, p50/p99
   latency, the service's RSS at start and end, and whether it picked up the new images.

Traffic goes only to 127.0.0.1. Usage:
    python bench/serve_load.py --db DB --queries query.csv --images query/ \\
        [--evaluate-json eval.json] [--add-csv add.csv --add-images db/] [--clients 4 --seconds 120]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parent.parent
GLUELOC = [sys.executable, "-m", "glueloc"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_service(db: Path, port: int) -> subprocess.Popen:
    process = subprocess.Popen([*GLUELOC, "serve", "--db", str(db), "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the service ended: {process.stderr.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("the service did not answer within 300 s")


def post(client: httpx.Client, url: str, photo: Path) -> tuple[int, float, dict]:
    clock = time.perf_counter()
    response = client.post(f"{url}/locate", files={"image": (photo.name, photo.read_bytes(), "image/jpeg")})
    seconds = time.perf_counter() - clock
    return response.status_code, seconds, response.json() if response.headers.get("content-type", "").startswith(
        "application/json") else {}


def same_answers(url: str, photos: list[Path], evaluate_json: Path) -> None:
    recorded = {r["name"]: r for r in json.loads(evaluate_json.read_text())["queries"] if "predicted" in r}
    latencies, differ, compared = [], [], 0
    with httpx.Client(timeout=120) as client:
        for photo in photos:
            status, seconds, answer = post(client, url, photo)
            latencies.append(seconds)
            if status != 200:
                differ.append(f"{photo.name}: HTTP {status} {answer}")
                continue
            expected = recorded.get(photo.name)
            if expected is None:
                continue
            compared += 1
            ex, ey = expected["predicted"]
            if ex is None or answer["x"] is None or abs(answer["x"] - ex) > 1e-3 or abs(answer["y"] - ey) > 1e-3:
                differ.append(f"{photo.name}: served ({answer['x']}, {answer['y']}), evaluate ({ex}, {ey})")
    lat = np.array(latencies)
    print(f"same answers: {compared - len(differ)} of {compared} queries at the position `glueloc evaluate` gave "
          f"(to 1e-3); warm latency per request p50 {np.percentile(lat, 50):.3f} s, p95 {np.percentile(lat, 95):.3f} s")
    for line in differ[:10]:
        print("  differs:", line)


def load(url: str, pid: int, photos: list[Path], clients: int, seconds: float, index_command: list[str] | None,
         index_after: float) -> None:
    results: list[tuple[float, int, float]] = []  # (time, status, seconds)
    lock = threading.Lock()
    start = time.monotonic()
    stop = start + seconds

    def client_loop(offset: int) -> None:
        with httpx.Client(timeout=120) as client:
            i = offset
            while time.monotonic() < stop:
                try:
                    status, took, _ = post(client, url, photos[i % len(photos)])
                except httpx.HTTPError:
                    status, took = -1, float("nan")
                with lock:
                    results.append((time.monotonic() - start, status, took))
                i += clients

    images_before = httpx.get(f"{url}/health").json()["images"]
    rss = [(0.0, rss_mb(pid))]
    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    indexer, index_done = None, None
    while time.monotonic() < stop:
        time.sleep(2)
        rss.append((time.monotonic() - start, rss_mb(pid)))
        if index_command and indexer is None and time.monotonic() - start >= index_after:
            indexer = subprocess.Popen(index_command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if indexer is not None and index_done is None and indexer.poll() is not None:
            index_done = time.monotonic() - start
    for t in threads:
        t.join()
    if indexer is not None:
        indexer.wait()
        index_done = index_done or time.monotonic() - start
    time.sleep(8)  # one reload interval and a little: the service may still be opening the new snapshot
    images_after = httpx.get(f"{url}/health").json()["images"]
    ok = np.array([s for _, status, s in results if status == 200])
    errors = [status for _, status, _ in results if status != 200]
    print("\n| clients | seconds | requests served | errors | p50 s | p99 s | RSS at start MB | RSS at end MB | "
          "RSS max MB | images before → after |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {clients} | {seconds:.0f} | {len(ok)} | {len(errors)} | {np.percentile(ok, 50):.2f} | "
          f"{np.percentile(ok, 99):.2f} | {rss[0][1]:.0f} | {rss[-1][1]:.0f} | {max(r for _, r in rss):.0f} | "
          f"{images_before} → {images_after} |")
    if indexer is not None:
        print(f"index run: started at {index_after:.0f} s, finished at {index_done:.0f} s, exit {indexer.returncode}; "
              f"{indexer.stdout.read().strip().splitlines()[0] if indexer.stdout else ''}")
    if errors:
        print("error statuses:", sorted(set(errors)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--queries", type=Path, required=True, help="CSV name,x,y of the query photos")
    parser.add_argument("--images", type=Path, required=True, help="folder of the query photos")
    parser.add_argument("--evaluate-json", type=Path, help="`glueloc evaluate --json` of the same queries and db")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--add-csv", type=Path, help="labels to index during the load test")
    parser.add_argument("--add-images", type=Path, help="their folder")
    parser.add_argument("--index-after", type=float, default=10.0)
    args = parser.parse_args()

    with open(args.queries, newline="", encoding="utf-8") as handle:
        photos = [args.images / row["name"] for row in csv.DictReader(handle)]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    clock = time.perf_counter()
    service = start_service(args.db, port)
    print(f"service up in {time.perf_counter() - clock:.1f} s (pid {service.pid}, RSS {rss_mb(service.pid):.0f} MB)")
    try:
        if args.evaluate_json:
            same_answers(url, photos, args.evaluate_json)
        if args.seconds > 0:
            index_command = None
            if args.add_csv:
                index_command = [*GLUELOC, "index", str(args.add_csv), "--images", str(args.add_images),
                                 "--db", str(args.db), "--no-progress"]
            load(url, service.pid, photos, args.clients, args.seconds, index_command, args.index_after)
    finally:
        service.terminate()
        service.wait(timeout=60)


if __name__ == "__main__":
    os.chdir(REPO)
    main()
