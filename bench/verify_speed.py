"""What one verified pair costs on this machine, by how the pairs share the cores (issue 16).

For the first ``--queries`` dev photos it builds the real shortlist (the database's own
extractor, embedder and fused rankings, its calibrated k) and then verifies the same
pairs (matcher + RANSAC, ``query.verify.verify_candidates``) under each thread policy:
one pair at a time with every core, and pairs side by side with fewer threads each. It
prints wall milliseconds per pair and checks that every policy finds the same inliers
(up to the last bits of float sums). A last row runs the pairs without point pruning,
which a batch of pairs needs in order to run as one (kornia runs a pruning batch pair by
pair): the floor of what batching could cost. With ``--budgets`` it also verifies the same
pairs under the default policy with only the strongest N keypoints of each side (what
``glueloc calibrate --match-keypoints N`` makes queries do). Nothing else should run at the
same time.

    python bench/verify_speed.py --db bench/out/getty [--queries 4] [--budgets 1024 768 512 384 256]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from glueloc.core.threads import usable_cores  # noqa: E402
from glueloc.query.localizer import Localizer  # noqa: E402
from glueloc.query.verify import PairThreads, verify_candidates  # noqa: E402
from glueloc.storage.layout import Layout  # noqa: E402
from glueloc.vision.images import load_image  # noqa: E402
from glueloc.vision.matchers import load_matcher  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "benchdata" / "getty")
    parser.add_argument("--queries", type=int, default=4)
    parser.add_argument("--budgets", type=int, nargs="*", default=[],
                        help="keypoint budgets of each side to time under the default policy")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with open(args.data / "query.csv", newline="") as handle:
        names = [row["name"] for row in csv.DictReader(handle)][: args.queries]
    cores = usable_cores()
    policies = [PairThreads(1, cores)] + [PairThreads(w, max(1, cores // w)) for w in (2, 4) if w <= cores]
    with Localizer(Layout.at(args.db)) as localizer:
        jobs = []
        for name in names:
            image = load_image(args.data / "query" / name)
            features = localizer.extractor.extract(image.rgb)
            embedding = None if localizer.embedder is None else localizer.embedder.embed(image.rgb)
            found = localizer.rankings(features, embedding=embedding)
            shortlist = [localizer.images[c.image_id] for c in found.candidates(found.fused(localizer.k))]
            jobs.append((features, [localizer.reader.features(i.shard, i.name) for i in shortlist]))
        pairs = sum(len(others) for _, others in jobs)
        verify_candidates(jobs[0][0], jobs[0][1][:2], localizer.matcher)  # warm-up: first-call allocations
        rows: list[dict] = []
        reference: list[int] = []

        def timed(workers: object, matcher: object, threads: PairThreads | None, of: list = jobs) -> None:
            """Verify every pair of ``of`` once under ``threads``; one row, compared with the first policy's inliers."""
            clock = time.perf_counter()
            inliers = [v.inliers for query, others in of
                       for v in verify_candidates(query, others, matcher, threads=threads)]
            seconds = time.perf_counter() - clock
            reference[:] = reference or inliers
            rows.append({"workers": workers, "threads": cores if threads is None else threads.threads, "pairs": pairs,
                         "ms_per_pair": round(1000 * seconds / pairs, 1),
                         "inliers_mean": round(float(np.mean(inliers)), 2),
                         "inliers_max_difference": int(np.max(np.abs(np.array(inliers) - reference)))})
            print(json.dumps(rows[-1]), flush=True)

        for policy in policies:
            timed(policy.workers, localizer.matcher, policy)
        # What a true batch would start from: a batch runs as one only without point pruning
        # (kornia runs a pruning batch pair by pair), so its pairs cost at least this each.
        whole = load_matcher(localizer.state.matcher, {**localizer.state.matcher_config, "width_confidence": -1})
        verify_candidates(jobs[0][0], jobs[0][1][:2], whole)
        timed("1, no point pruning", whole, None)
        default = PairThreads.for_matcher(localizer.matcher)
        for budget in args.budgets:
            fewer = [(query.strongest(budget), [other.strongest(budget) for other in others]) for query, others in jobs]
            timed(f"{default.workers}, strongest {budget} keypoints", localizer.matcher, default, fewer)
    print(f"{cores} cores, {pairs} pairs of {len(jobs)} dev queries at k = {localizer.k}")
    print("| pairs at once | threads each | ms per pair | mean inliers | largest inlier difference |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['workers']} | {r['threads']} | {r['ms_per_pair']} | {r['inliers_mean']} "
              f"| {r['inliers_max_difference']} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
