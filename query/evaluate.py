"""Error metrics over a labelled query set (the competition's MAE and friends).

MAE is mean(|dx| + |dy|), the metric of the Kaggle task glueloc's benchmark comes
from. Queries are only read, never written to the database.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from glueloc.core.errors import BadImageError
from glueloc.core.labels import LabelRow
from glueloc.query.localizer import Location, Localizer

logger = logging.getLogger(__name__)

GROSS_ERROR = 20.0  # units; a "gross failure" is an answer further off than this


def error_metrics(errors: np.ndarray) -> dict[str, float | int]:
    """The headline numbers of a set of errors (|dx| + |dy| each)."""
    return {"mae": round(float(errors.mean()), 3), "median": round(float(np.median(errors)), 3),
            "within_2": round(float((errors <= 2).mean()), 3), "gross_failures": int((errors > GROSS_ERROR).sum())}


def confidence_metrics(errors: np.ndarray, confidence: np.ndarray) -> dict[str, float]:
    """Does confidence mean something? MAE of the most confident 50 % / 80 % / all answers,
    and Spearman's rank correlation of confidence with error (negative is good)."""
    order = np.argsort(-confidence, kind="stable")
    out = {f"mae_top_{share}": round(float(errors[order[:max(1, len(order) * share // 100)]].mean()), 3)
           for share in (50, 80, 100)}
    rank_c = np.argsort(np.argsort(confidence, kind="stable"), kind="stable").astype(float)
    rank_e = np.argsort(np.argsort(errors, kind="stable"), kind="stable").astype(float)
    varied = len(errors) > 2 and rank_c.std() > 0 and rank_e.std() > 0
    out["spearman_confidence_error"] = round(float(np.corrcoef(rank_c, rank_e)[0, 1]), 3) if varied else 0.0
    return out


@dataclass
class Evaluation:
    records: list[dict]
    metrics: dict[str, float | int]


def evaluate(localizer: Localizer, rows: list[LabelRow], progress: Callable[[int], None] | None = None) -> Evaluation:
    records: list[dict] = []
    errors: list[float] = []
    confidences: list[float] = []
    latencies: list[float] = []
    stages: dict[str, list[float]] = {}
    failed = 0
    for row in rows:
        try:
            result: Location = localizer.locate(row.path)
        except BadImageError as exc:
            failed += 1
            records.append({"name": row.name, "error": str(exc)})
            if progress:
                progress(1)
            continue
        error = abs(result.x - row.x) + abs(result.y - row.y) if result.x is not None else float("inf")
        errors.append(error)
        confidences.append(result.confidence)
        latencies.append(result.seconds["total"])
        for stage, seconds in result.seconds.items():
            if stage != "total":
                stages.setdefault(stage, []).append(seconds)
        records.append({
            "name": row.name, "true": [row.x, row.y], "predicted": [result.x, result.y], "error": round(error, 3),
            "confidence": result.confidence, "verified": result.verified, "resected": result.resected,
            "deepened": result.deepened, "skipped": result.skipped, "shortlist": result.candidates,
            "neighbours": [(n.name, n.inliers) if n.probability is None else (n.name, n.inliers, n.probability)
                           for n in result.neighbours],
            "seconds": result.seconds,
        })
        if progress:
            progress(1)
    e = np.array(errors) if errors else np.array([np.inf])
    lat = np.array(latencies) if latencies else np.array([np.nan])
    metrics: dict[str, float | int] = {
        "queries": len(rows), "unreadable": failed,
        "mae": round(float(e.mean()), 3), "median": round(float(np.median(e)), 3), "p90": round(float(np.percentile(e, 90)), 3),
        "within_1": round(float((e <= 1).mean()), 3), "within_2": round(float((e <= 2).mean()), 3),
        "within_5": round(float((e <= 5).mean()), 3), "gross_failures": int((e > GROSS_ERROR).sum()),
        "latency_p50_s": round(float(np.percentile(lat, 50)), 3), "latency_p95_s": round(float(np.percentile(lat, 95)), 3),
        # queries whose first k left the calibrated answer unsure, so more was verified (adaptive depth)
        "deepened": sum(1 for r in records if r.get("deepened")),
        # queries that stopped verifying before the end of the shortlist (early stop), and the pairs verified
        "stopped_early": sum(1 for r in records if r.get("skipped")),
        "pairs_p50": float(np.median([len(r["neighbours"]) for r in records if "neighbours" in r] or [0])),
    }
    if errors:
        confidence = confidence_metrics(e, np.array(confidences))
        metrics.update({f"confidence_{key}": value for key, value in confidence.items()})
    for stage, values in stages.items():  # where the time goes: extract, retrieve, verify
        metrics[f"{stage}_p50_s"] = round(float(np.percentile(values, 50)), 3)
        metrics[f"{stage}_p95_s"] = round(float(np.percentile(values, 95)), 3)
    return Evaluation(records, metrics)
