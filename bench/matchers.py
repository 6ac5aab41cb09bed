"""How well does each matcher's RANSAC inlier count tell a true neighbour from a stranger?

Pairs from the Getty benchmark: for each development query, database images within 2
units of its true position are positives and images 50 or more units away are
negatives (a fixed-seed sample of each per query). For every pipeline this prints ROC
AUC of the inlier count, recall of positives at 1 % false-positive rate, ms per
extraction, ms per pair (match + RANSAC) and the process's peak RSS. Each pipeline runs
in its own process so peak RSS is its own.

    python bench/matchers.py                       # every pipeline, prints the table
    python bench/matchers.py --pipelines sift --pos 2 --neg 2 --queries 10   # a quick look

Restricted data: reads ../shared/benchdata/getty, writes only numbers to bench/out/.
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DEFAULT_DATA = REPO.parent / "shared" / "benchdata" / "getty"
PIPELINE_NAMES = ("sift", "xfeat+lighterglue", "aliked+lightglue", "superpoint+superglue")


@dataclass(frozen=True)
class Pair:
    query: str
    db: str
    positive: bool
    distance: float


@dataclass
class Result:
    pipeline: str
    pairs: int
    positives: int
    negatives: int
    auc: float | None = None
    recall_at_1pct_fpr: float | None = None
    ms_per_extraction: float | None = None
    ms_per_pair: float | None = None
    peak_rss_mb: float | None = None
    error: str | None = None


def read_labels(path: Path) -> dict[str, tuple[float, float]]:
    with open(path, newline="", encoding="utf-8-sig") as handle:
        return {row["name"]: (float(row["x"]), float(row["y"])) for row in csv.DictReader(handle)}


def build_pairs(data: Path, n_queries: int | None, per_pos: int, per_neg: int, seed: int) -> list[Pair]:
    db = read_labels(data / "db.csv")
    queries = read_labels(data / "glueloc.query.csv")
    names = sorted(db)
    xy = np.array([db[n] for n in names])
    rng = np.random.default_rng(seed)
    pairs: list[Pair] = []
    used = 0
    for query in sorted(queries):
        distance = np.hypot(*(xy - np.array(queries[query])).T)
        positives = np.flatnonzero(distance <= 2.0)
        negatives = np.flatnonzero(distance >= 50.0)
        if len(positives) == 0:
            continue  # a query with no db image within 2 units has no positive pair
        if n_queries is not None and used >= n_queries:
            break
        used += 1
        for i in rng.choice(positives, size=min(per_pos, len(positives)), replace=False):
            pairs.append(Pair(query, names[i], True, float(distance[i])))
        for i in rng.choice(negatives, size=min(per_neg, len(negatives)), replace=False):
            pairs.append(Pair(query, names[i], False, float(distance[i])))
    return pairs


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Probability that a random positive outscores a random negative (ties count half)."""
    scores = np.concatenate([positive, negative])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks over ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    u = ranks[: len(positive)].sum() - len(positive) * (len(positive) + 1) / 2.0
    return float(u / (len(positive) * len(negative)))


def recall_at_fpr(positive: np.ndarray, negative: np.ndarray, fpr: float = 0.01) -> float:
    """Share of positives scoring >= the lowest threshold that keeps FPR <= ``fpr``."""
    for threshold in np.unique(np.concatenate([positive, negative, [np.inf]])):
        if (negative >= threshold).mean() <= fpr:
            return float((positive >= threshold).mean())
    return 0.0


def run_one(name: str, pairs: list[Pair], data: Path, threads: int) -> Result:
    import torch

    from glueloc.core.errors import GluelocError
    from glueloc.vision.extractors import load_extractor
    from glueloc.vision.images import load_image
    from glueloc.vision.matchers import load_matcher
    from glueloc.vision.pipelines import get_pipeline
    from glueloc.query.verify import verify_pair

    torch.set_num_threads(threads)
    positives = sum(p.positive for p in pairs)
    result = Result(name, len(pairs), positives, len(pairs) - positives)
    pipeline = get_pipeline(name)
    try:
        extractor = load_extractor(pipeline.extractor, pipeline.extractor_conf)
        matcher = load_matcher(pipeline.matcher, pipeline.matcher_conf)
    except GluelocError as exc:
        result.error = str(exc).split(";")[0]
        return result
    features = {}
    images = sorted({p.query for p in pairs} | {p.db for p in pairs})
    extract_seconds = 0.0
    queries = {p.query for p in pairs}
    for image in images:
        rgb = load_image(data / ("query" if image in queries else "db") / image).rgb
        clock = time.perf_counter()
        features[image] = extractor.extract(rgb)
        extract_seconds += time.perf_counter() - clock
    inliers = np.zeros(len(pairs))
    clock = time.perf_counter()
    for i, pair in enumerate(pairs):
        inliers[i] = verify_pair(features[pair.query], features[pair.db], matcher).inliers
    pair_seconds = time.perf_counter() - clock
    is_pos = np.array([p.positive for p in pairs])
    result.auc = round(roc_auc(inliers[is_pos], inliers[~is_pos]), 4)
    result.recall_at_1pct_fpr = round(recall_at_fpr(inliers[is_pos], inliers[~is_pos]), 4)
    result.ms_per_extraction = round(1000 * extract_seconds / len(images), 1)
    result.ms_per_pair = round(1000 * pair_seconds / len(pairs), 1)
    result.peak_rss_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return result


def table(results: list[Result]) -> str:
    lines = ["| pipeline | pairs (pos/neg) | ROC AUC | recall @ 1 % FPR | ms / extraction | ms / pair | peak RSS MB |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        if r.error:
            lines.append(f"| {r.pipeline} | {r.positives}/{r.negatives} | not run: {r.error} | | | | |")
        else:
            lines.append(f"| {r.pipeline} | {r.positives}/{r.negatives} | {r.auc:.3f} | {r.recall_at_1pct_fpr:.1%} | "
                         f"{r.ms_per_extraction:.0f} | {r.ms_per_pair:.0f} | {r.peak_rss_mb:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--pipelines", nargs="+", default=list(PIPELINE_NAMES))
    parser.add_argument("--queries", type=int, default=None, help="queries with a positive to use (default all)")
    parser.add_argument("--pos", type=int, default=4, help="positive pairs per query")
    parser.add_argument("--neg", type=int, default=4, help="negative pairs per query")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one pipeline in this process
    args = parser.parse_args()
    if not (args.data / "db.csv").exists():
        sys.exit(f"no Getty data at {args.data}")
    pairs = build_pairs(args.data, args.queries, args.pos, args.neg, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.one:
        result = run_one(args.one, pairs, args.data, args.threads)
        (args.out / f"matchers-{args.one}.json").write_text(json.dumps(asdict(result), indent=2))
        return
    print(f"{len(pairs)} pairs from {len({p.query for p in pairs})} queries "
          f"({sum(p.positive for p in pairs)} positive <= 2 units, {sum(not p.positive for p in pairs)} negative >= 50 units)",
          flush=True)
    results = []
    for name in args.pipelines:
        command = [sys.executable, __file__, "--one", name, "--data", str(args.data), "--pos", str(args.pos),
                   "--neg", str(args.neg), "--seed", str(args.seed), "--threads", str(args.threads), "--out", str(args.out)]
        if args.queries is not None:
            command += ["--queries", str(args.queries)]
        clock = time.perf_counter()
        subprocess.run(command, check=True)
        result = Result(**json.loads((args.out / f"matchers-{name}.json").read_text()))
        results.append(result)
        print(f"{name}: done in {time.perf_counter() - clock:.0f} s", flush=True)
    print(table(results))


if __name__ == "__main__":
    main()
