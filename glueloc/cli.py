"""The ``glueloc`` command line: a thin layer over indexer/, storage/ and query/.

Every command turns a :class:`GluelocError` into one line per problem on stderr and a
non-zero exit; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import json
import logging
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional, TypeVar

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from glueloc.core.errors import GluelocError
from glueloc.storage.layout import Layout
from glueloc.storage.vectors import DEFAULT_EXACT_LIMIT

if TYPE_CHECKING:
    from glueloc.query.calibrate import CalibrationResult
    from glueloc.query.localizer import QueryOptions
    from glueloc.storage.inspect import CalibrationStatus

logger = logging.getLogger(__name__)

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Fine-grained image localisation: index labelled photos, then say where a new photo was taken.")
db_app = typer.Typer(no_args_is_help=True, help="Schema migrations of a database.")
app.add_typer(db_app, name="db")

DbOption = Annotated[Path, typer.Option("--db", envvar="GLUELOC_DB", help="Database directory.")]
DEFAULT_DB = Path("glueloc-db")
CatalogueOption = Annotated[Optional[str], typer.Option(
    "--catalogue", metavar="URL",
    help="SQL catalogue of a new database, e.g. postgresql+psycopg://user@host/dbname (default: glueloc.sqlite "
         "inside --db). Recorded in the directory's catalogue.json (without a password: PGPASSWORD or ~/.pgpass "
         "give it), so later commands need only --db.")]
DEFAULT_PIPELINE = "xfeat+lighterglue"  # chosen by bench/matchers.py (README)
DEFAULT_RETRIEVAL = "fused"  # query.retrieval.FUSED, spelled here so the CLI imports no model code to start
CALIBRATION_PLACES = 300  # query.calibrate.CalibrationOptions.places, spelled here for the same reason
F = TypeVar("F", bound=Callable[..., Any])
RETRIEVAL_HELP = ("How the shortlist is drawn: fused (global vector, descriptor votes and the learned image "
                  "ranking in turns), vlad (global vector only), votes (descriptor votes only), image (the "
                  "learned image ranking only).")
RESECTION_HELP = ("Place the query by the directions to its neighbours when the calibration fitted a camera "
                  "for it (`glueloc calibrate`); --no-resection answers with the rule alone.")
ESTIMATOR_HELP = ("Position from verified neighbours: auto (the database's calibration if any, else best), "
                  "calibrated, best, weighted-mean, cluster.")


def _fail(message: str, code: int) -> None:
    for line in message.splitlines() or [message]:
        typer.echo(f"error: {line}", err=True)
    raise typer.Exit(code)


#: What an interrupted command leaves behind, said in its ``interrupted:`` line.
KEPT_NOTHING = "nothing was written"
KEPT_BATCHES = "committed batches are kept; run the same command again to finish"


def user_errors(kept: str = KEPT_NOTHING) -> Callable[[F], F]:
    """Report user errors as one line each with a non-zero exit, and Ctrl-C (or SIGTERM) as
    exit 130 with one line saying what the command kept (``kept``)."""

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return func(*args, **kwargs)
            except GluelocError as exc:
                _fail(str(exc), exc.exit_code)
            except KeyboardInterrupt:
                typer.echo(f"interrupted: {kept}", err=True)
                raise typer.Exit(130) from None

        return wrapper  # type: ignore[return-value]

    return decorate


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops a writing command the same clean way as Ctrl-C, also when the CLI is
    called without ``glueloc.entry`` (which already does this for the whole process)."""
    from glueloc.signals import interrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


DEEPEN_TO = 0  # query.localizer.QueryOptions.deepen_to (off), spelled here so the CLI imports no model code to start
DeepenOption = Annotated[int, typer.Option(
    min=0, help="Adaptive depth: when no verified candidate is 50 % likely right (calibrated databases), verify "
                "further down the rankings, up to this many candidates in all, at most 1.5 s more "
                "(e.g. 30; 0: never).")]
STOP_ABOVE = 0.98  # query.localizer.QueryOptions.stop_above, spelled here for the help text (no model imports)
VerifyAllOption = Annotated[bool, typer.Option(
    "--verify-all", help="Verify the whole shortlist; by default a calibrated query stops once a verified "
                         f"candidate is {STOP_ABOVE:.0%} likely right.")]


def _query_options(k: int | None, collapse: bool, estimator: str, retrieval: str,
                   resection: bool = True, deepen_to: int = DEEPEN_TO, verify_all: bool = False) -> "QueryOptions":
    """The query options of a command; the Localizer checks the estimator and retrieval named."""
    from glueloc.query.localizer import QueryOptions

    options = QueryOptions(k=k, collapse=collapse, estimator=estimator, retrieval=retrieval, resection=resection,
                           deepen_to=deepen_to)
    return replace(options, stop_above=None) if verify_all else options


def _note_uncalibrated(localizer: Any, db: Path) -> None:
    """One line on stderr when ``auto`` answers without a calibration: the answers are then
    the uncalibrated ranking, without resection, and the user should know why and what to run."""
    if localizer.decision.uncalibrated:
        typer.echo(f"note: {db} is not calibrated for its current state ({localizer.options.retrieval} shortlists): "
                   f"answering by most inliers, without resection; run `glueloc calibrate --db {db}`", err=True)


def _progress(enabled: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    disable=not enabled, transient=False, console=None)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what happens.")] = False) -> None:
    """glueloc: index labelled photos, then find where a new photo was taken."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@app.command()
@user_errors(KEPT_BATCHES)
def index(
    labels: Annotated[Path, typer.Argument(help="CSV with header name,x,y.")],
    images: Annotated[Path, typer.Option("--images", help="Folder the names in the CSV are relative to.")],
    db: DbOption = DEFAULT_DB,
    catalogue: CatalogueOption = None,
    extractor: Annotated[Optional[str], typer.Option(help="Local features: xfeat (default), aliked, sift, superpoint (new database only).")] = None,
    embedder: Annotated[Optional[str], typer.Option(help="Image embedder for the learned image ranking: effnet-lite0-gem (default) or none (new database only).")] = None,
    matcher: Annotated[Optional[str], typer.Option(help="Matcher recorded for queries (new database only).")] = None,
    max_side: Annotated[Optional[int], typer.Option(help="Resize images so the longer side is at most this.")] = None,
    max_keypoints: Annotated[Optional[int], typer.Option(help="Keypoint budget per image.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per committed batch.")] = 32,
    clusters: Annotated[Optional[int], typer.Option(min=1, help="VLAD codebook size K (new database).")] = None,
    pca_dim: Annotated[Optional[int], typer.Option(min=0, help="Global vector size after PCA-whitening; 0 = none (new database).")] = None,
    exact_limit: Annotated[int, typer.Option(min=0, help="FAISS search stays exact up to this many images, then HNSW.")] = DEFAULT_EXACT_LIMIT,
    update_coordinates: Annotated[bool, typer.Option(help="Accept (and record) new coordinates for indexed names.")] = False,
    rehash: Annotated[bool, typer.Option(
        help="Hash every indexed file again to find changed content, even files whose size and mtime are "
             "unchanged (a re-run otherwise trusts those).")] = False,
    calibrate: Annotated[bool, typer.Option(
        help="Then calibrate the database (as `glueloc calibrate` with its defaults) unless it is already "
             "calibrated for exactly these images.")] = False,
    ray: Annotated[Optional[str], typer.Option(
        "--ray", metavar="ADDRESS",
        help="Extract features on a Ray cluster: auto (the cluster `ray start` joined this machine to), host:port, "
             "or local (start one here). The database directory and the images must be at the same paths on "
             "every worker; this process commits (docs/DISTRIBUTED.md).")] = None,
    ray_workers: Annotated[Optional[int], typer.Option(
        min=1, help="Ray workers to start (default: one per CPU of the cluster).")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Add the labelled images of LABELS to the database (skipping those already indexed)."""
    from glueloc.core.labels import read_labels
    from glueloc.indexer.distributed import RayOptions
    from glueloc.indexer.pipeline import IndexOptions, IndexRunner

    rows = read_labels(labels, images)
    conf = {k: v for k, v in (("max_side", max_side), ("max_keypoints", max_keypoints)) if v is not None}
    vlad_conf = {k: v for k, v in (("num_clusters", clusters), ("pca_dim", pca_dim)) if v is not None}
    options = IndexOptions(extractor=extractor, extractor_conf=conf or None, matcher=matcher,
                           batch_size=batch_size, update_coordinates=update_coordinates, vlad_conf=vlad_conf or None,
                           exact_limit=exact_limit, embedder=embedder, rehash=rehash,
                           ray=None if ray is None else RayOptions(address=ray, workers=ray_workers))
    arguments = {"labels": str(labels), "images": str(images), "extractor": extractor, "embedder": embedder,
                 "matcher": matcher,
                 "conf": conf, "vlad": vlad_conf, "batch_size": batch_size, "update_coordinates": update_coordinates,
                 "rehash": rehash, "ray": ray, "ray_workers": ray_workers}
    with _progress(progress and not json_out) as bar, _sigterm_as_interrupt():
        task = bar.add_task("indexing", total=len(rows))
        runner = IndexRunner(Layout.at(db, catalogue), options, progress=lambda n: bar.advance(task, n))
        summary = runner.run(rows, images, arguments)
    result = {"run": summary.run_id, "outcome": summary.outcome, "rows": summary.total, "added": summary.added,
              "skipped": summary.skipped, "updated": summary.updated, "rejected": summary.rejected,
              "seconds": round(summary.seconds, 2), "images_per_second": round(summary.images_per_second, 2),
              "rejections": [reason for _, reason in summary.rejections]}
    if summary.codebook_trained is not None:
        result["codebook_trained"] = summary.codebook_trained
    if summary.model_trained is not None:
        result["model_trained"] = summary.model_trained
    if summary.model_note is not None:
        result["model_note"] = summary.model_note
    if json_out:
        typer.echo(json.dumps(result, indent=2))
    else:
        if summary.codebook_trained is not None:
            typer.echo(f"trained codebook {summary.codebook_trained} and published every global vector")
        if summary.model_trained is not None:
            typer.echo(_model_line(db))
        if summary.model_note is not None:
            typer.echo(f"note: {summary.model_note}")
        for reason in result["rejections"]:
            typer.echo(f"rejected: {reason}", err=True)
        typer.echo(f"run {summary.run_id}: added {summary.added}, skipped {summary.skipped}, updated {summary.updated}, "
                   f"rejected {summary.rejected} of {summary.total} rows in {summary.seconds:.1f} s "
                   f"({summary.images_per_second:.1f} images/s)")
    if calibrate and summary.outcome.startswith("completed") and not _calibration_status(db).current:
        try:
            fitted = _calibrate(db, CALIBRATION_PLACES, (), 0, DEFAULT_RETRIEVAL, progress and not json_out)
        except GluelocError as exc:
            raise GluelocError(f"run {summary.run_id} is committed, but the database could not be calibrated: {exc}") from exc
        if not json_out:
            _print_calibration(fitted)
    if summary.rejections:
        # The next step is to fix the rejected images and index again, not to calibrate a
        # database that run would change; the report stays the run's own lines.
        raise typer.Exit(1)
    if not json_out:
        typer.echo(_calibration_line(_calibration_status(db), db))


@app.command()
@user_errors("nothing was committed: the vectors and FAISS file stay as they were")
def reindex(
    db: DbOption = DEFAULT_DB,
    retrain: Annotated[bool, typer.Option(help="Train a new codebook (VLAD centres + PCA) first.")] = False,
    clusters: Annotated[Optional[int], typer.Option(min=1, help="VLAD codebook size K (with --retrain).")] = None,
    pca_dim: Annotated[Optional[int], typer.Option(min=0, help="Vector size after PCA-whitening (with --retrain).")] = None,
    assignment: Annotated[Optional[str], typer.Option(help="hard or soft (with --retrain).")] = None,
    train_images: Annotated[Optional[int], typer.Option(min=1, help="Images sampled to train the codebook (with --retrain).")] = None,
    exact_limit: Annotated[int, typer.Option(min=0, help="FAISS search stays exact up to this many images, then HNSW.")] = DEFAULT_EXACT_LIMIT,
) -> None:
    """Rebuild every global vector and the FAISS index (with --retrain: from a new codebook)."""
    from glueloc.indexer.reindex import reindex as run_reindex

    overrides = {k: v for k, v in (("num_clusters", clusters), ("pca_dim", pca_dim), ("assignment", assignment),
                                   ("train_images", train_images)) if v is not None}
    if overrides and not retrain:
        raise GluelocError("--clusters, --pca-dim, --assignment and --train-images change the codebook: add --retrain")
    with _sigterm_as_interrupt():
        result = run_reindex(Layout.at(db), retrain=retrain, conf_overrides=overrides or None, exact_limit=exact_limit)
    what = f"trained codebook {result.codebook_id}" if result.trained else f"kept codebook {result.codebook_id}"
    typer.echo(f"{what}: {result.images} global vectors of {result.dim} dimensions, FAISS rebuilt "
               f"in {result.seconds:.1f} s")
    if result.model_id is not None:
        typer.echo(_model_line(db))


@app.command()
@user_errors("nothing was committed: the current retrieval model and its vectors stay as they were")
def train(
    db: DbOption = DEFAULT_DB,
    methods: Annotated[Optional[list[str]], typer.Option("--method", help="Candidate projection (repeatable): pca, lw, triplet; the best on held-out places is kept.")] = None,
    dim: Annotated[Optional[int], typer.Option(min=1, help="Length of the learned vectors.")] = None,
    held_out: Annotated[Optional[float], typer.Option(min=0.01, max=0.5, help="Share of capture points held out to choose the method.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Learn the database's image-retrieval model from its own labels (also run by the first index run)."""
    from glueloc.indexer.train import train as run_train

    overrides: dict[str, Any] = {k: v for k, v in (("methods", methods), ("dim", dim), ("held_out", held_out)) if v}
    with _sigterm_as_interrupt():
        result = run_train(Layout.at(db), overrides or None)
    if json_out:
        typer.echo(json.dumps({"model": result.model_id, "method": result.method, "images": result.images,
                               "dim": result.dim, "held_out": result.held_out, "seconds": round(result.seconds, 2)},
                              indent=2))
        return
    typer.echo(_model_line(db))
    typer.echo(_calibration_line(_calibration_status(db), db))


def _model_line(db: Path) -> str:
    """One line on the current retrieval model: what won on held-out places, and by how much."""
    from glueloc.storage.database import open_database
    from glueloc.storage.models import RetrievalModel

    database = open_database(Layout.at(db))
    try:
        with database.session() as session:
            state = database.state(session)
            row = session.get(RetrievalModel, state.model_id) if state is not None and state.model_id else None
            if row is None:
                return "no retrieval model"
            scores = ", ".join(f"{m} {100 * r.get('R@10', 0):.1f} %" for m, r in row.held_out.items())
            return (f"trained retrieval model {row.id} ({row.method}, {row.dim}-d) on {row.trained_images} images in "
                    f"{row.seconds:.1f} s; held-out recall@10 within {row.radius:.2f}: {scores}")
    finally:
        database.close()


@app.command()
@user_errors("a removal is one commit: it landed whole or not at all (`glueloc inspect` lists it among the runs if it landed)")
def remove(
    names: Annotated[Optional[list[str]], typer.Argument(help="Names of indexed images to retire.")] = None,
    csv_file: Annotated[Optional[Path], typer.Option("--csv", help="A CSV with a name column: retire those images.")] = None,
    db: DbOption = DEFAULT_DB,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Retire images from the catalogue, their vectors and every derived index, in one commit."""
    from glueloc.indexer.remove import read_names, remove_images

    wanted = list(names or []) + (read_names(csv_file) if csv_file is not None else [])
    if not wanted:
        raise GluelocError("name the images to remove, or give --csv FILE")
    arguments = {"names": list(names or []), "csv": str(csv_file) if csv_file else None}
    with _sigterm_as_interrupt():
        summary = remove_images(Layout.at(db), wanted, arguments)
    if json_out:
        typer.echo(json.dumps({"run": summary.run_id, "removed": summary.removed, "not_found": summary.not_found,
                               "shards_collected": summary.shards_collected,
                               "vector_shards_collected": summary.vector_shards_collected,
                               "seconds": round(summary.seconds, 3)}, indent=2))
    else:
        for name in summary.not_found:
            typer.echo(f"not indexed: {name}", err=True)
        typer.echo(f"run {summary.run_id}: removed {summary.removed} image(s); {summary.shards_collected} feature "
                   f"shard(s) left without a live image deleted; {len(summary.not_found)} name(s) not indexed")
        typer.echo(_calibration_line(_calibration_status(db), db))
    if summary.not_found:
        raise typer.Exit(1)


@app.command()
@user_errors("what --repair finished is committed; run it again to finish")
def audit(
    db: DbOption = DEFAULT_DB,
    deep: Annotated[bool, typer.Option(help="Also re-hash shards, compare FAISS vectors, re-hash image files.")] = False,
    repair: Annotated[bool, typer.Option(help="Rebuild what is derivable (FAISS from HDF5), delete leftovers.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check that SQLite, HDF5 and FAISS agree. Exit 0 when clean, 1 otherwise."""
    from glueloc.indexer.repair import repair as run_repair
    from glueloc.storage import audit as audit_mod

    layout = Layout.at(db)
    if repair:
        for action in run_repair(layout):
            typer.echo(f"repair: {action}")
    report = audit_mod.audit(layout, deep=deep)
    if json_out:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        for finding in report.findings:
            typer.echo(f"{finding.severity}: [{finding.code}] {finding.message}")
        verdict = "clean" if report.clean else f"{len(report.errors)} error(s)"
        typer.echo(f"audit{' --deep' if deep else ''}: {report.images} images, {report.shards} shards, "
                   f"{report.vectors} vectors: {verdict}")
    if not report.clean:
        raise typer.Exit(1)


@app.command()
@user_errors()
def inspect(
    name: Annotated[Optional[str], typer.Argument(help="An image name: show its record.")] = None,
    db: DbOption = DEFAULT_DB,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show what the database holds (or one image's record)."""
    from glueloc.storage import inspect as inspect_mod
    from glueloc.storage.database import open_database

    database = open_database(Layout.at(db))
    try:
        data = inspect_mod.image_record(database, name) if name else inspect_mod.summary(database)
    finally:
        database.close()
    if json_out:
        typer.echo(json.dumps(data, indent=2, default=str))
        return
    for key, value in data.items():
        if key == "runs":
            typer.echo("runs (newest first):")
            for run in value:
                typer.echo(f"  #{run['id']} {run['command']} {run['started_at']} {run['outcome']}: added {run['added']}, "
                           f"skipped {run['skipped']}, rejected {run['rejected']}, updated {run['updated']}")
        else:
            typer.echo(f"{key}: {json.dumps(value, default=str) if isinstance(value, (dict, list)) else value}")


@db_app.command("upgrade")
@user_errors()
def db_upgrade(db: DbOption = DEFAULT_DB, catalogue: CatalogueOption = None) -> None:
    """Create the database schema, or bring it to the latest revision."""
    from glueloc.storage.database import upgrade

    before, after = upgrade(Layout.at(db, catalogue))
    typer.echo(f"schema {before or '(empty)'} -> {after}" if before != after else f"schema already at {after}")


@db_app.command("current")
@user_errors()
def db_current(db: DbOption = DEFAULT_DB) -> None:
    """Print the database's schema revision and the one this glueloc expects."""
    from glueloc.storage.database import current_revision, head_revision, make_engine

    layout = Layout.at(db)
    if layout.sqlite_path is not None and not layout.sqlite_path.exists():
        raise GluelocError(f"no glueloc database at {layout.root}")
    engine = make_engine(layout.url)
    try:
        typer.echo(f"database: {current_revision(engine)}  code: {head_revision()}")
    finally:
        engine.dispose()


@app.command()
@user_errors()
def query(
    image: Annotated[Path, typer.Argument(help="The photo to locate.")],
    db: DbOption = DEFAULT_DB,
    k: Annotated[Optional[int], typer.Option(min=1, help="Candidates to retrieve and verify [default: the calibration's, else 10].")] = None,
    collapse: Annotated[bool, typer.Option(help="Keep one image per capture position in the shortlist.")] = False,
    estimator: Annotated[str, typer.Option(help=ESTIMATOR_HELP)] = "auto",
    retrieval: Annotated[str, typer.Option(help=RETRIEVAL_HELP)] = DEFAULT_RETRIEVAL,
    resection: Annotated[bool, typer.Option(help=RESECTION_HELP)] = True,
    deepen_to: DeepenOption = DEEPEN_TO,
    verify_all: VerifyAllOption = False,
    viz: Annotated[Optional[Path], typer.Option(help="Write a PNG of the matches with the best neighbour.")] = None,
    map_png: Annotated[Optional[Path], typer.Option("--map", help="Write a PNG map: db positions, neighbours, estimate.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Say where IMAGE was taken."""
    from dataclasses import asdict

    import numpy as np

    from glueloc.pictures import match_picture
    from glueloc.query.localizer import Localizer
    from glueloc.viz import draw_map, save_rgb

    with Localizer(Layout.at(db), _query_options(k, collapse, estimator, retrieval, resection, deepen_to, verify_all)) as localizer:
        result = localizer.locate(image)
        opened = localizer.open_seconds
        if result.x is not None:  # an answer: say how it was ranked before showing it
            _note_uncalibrated(localizer, db)
        if viz is not None and result.neighbours:
            best = result.used[0] if result.used else max(result.neighbours, key=lambda n: n.inliers)
            save_rgb(viz, match_picture(localizer, image, best.image_id))
        if map_png is not None:
            db_xy = np.array([(i.x, i.y) for i in localizer.images.values()])
            estimate = (result.x, result.y) if result.x is not None else None
            picture = draw_map(db_xy, [(n.x, n.y, n.inliers) for n in result.neighbours], estimate,
                               title=f"{result.query}: confidence {result.confidence:.2f}")
            save_rgb(map_png, picture)
    if json_out:
        typer.echo(json.dumps(asdict(result), indent=2))
        if result.x is None:
            raise typer.Exit(1)
        return
    if result.x is None:
        _fail(f"{result.query}: no estimate: retrieval ({retrieval}) found no candidate for it "
              "(too few features in the image?)", 1)
    status = "verified" if result.verified else "NOT verified (no candidate has enough inliers)"
    typer.echo(f"{result.query}: x={result.x:.3f} y={result.y:.3f} confidence={result.confidence:.2f} "
               f"uncertainty={result.uncertainty:.2f} ({status}; {result.ranked_by})")
    if "resection" in result.ranked_by and not result.resected:
        typer.echo("  not resected: fewer than 3 capture points near the answer verified; the rule's answer stands")
    votes = {name: count for name, _, count in result.candidates}
    for n in result.neighbours:
        mark = "*" if n in result.used else " "
        chance = "" if n.probability is None else f"  p(near) {n.probability:.2f}"
        chance += "" if n.bearing is None else f"  seen at {n.bearing:+.1f} deg"
        typer.echo(f" {mark} {n.name}  ({n.x:.2f}, {n.y:.2f})  similarity {n.similarity:.3f}  votes {votes[n.name]}  "
                   f"inliers {n.inliers}/{n.matches}{chance}")
    if result.skipped:
        typer.echo(f"  stopped after {len(result.neighbours)} of {len(result.candidates)} candidates: a verified one was "
                   "sure enough (--verify-all checks them all)")
    typer.echo("seconds: " + ", ".join(f"{k} {v:.3f}" for k, v in result.seconds.items()))
    typer.echo("opened in: " + ", ".join(f"{k} {v:.3f}" for k, v in opened.items()))
    for picture in (viz, map_png):
        if picture is not None:
            typer.echo(f"wrote {picture}")


@app.command()
@user_errors("nothing was recorded: a calibration is written in one transaction at its end")
def calibrate(
    db: DbOption = DEFAULT_DB,
    places: Annotated[int, typer.Option(min=10, help="Capture points to hold out, one view each.")] = CALIBRATION_PLACES,
    k: Annotated[Optional[list[int]], typer.Option(
        min=2, help="Shortlist lengths to compare (repeat the option) [default: 10 and 15].")] = None,
    seed: Annotated[int, typer.Option(help="Which places are held out.")] = 0,
    retrieval: Annotated[str, typer.Option(help=RETRIEVAL_HELP + " Queries drawing it so use the fit.")] = DEFAULT_RETRIEVAL,
    match_keypoints: Annotated[Optional[int], typer.Option(
        min=1, help="Match only the strongest N keypoints of each image; queries then do the same "
                    "(fewer is faster: on Getty a pair took 62 instead of 147 ms at 512 of XFeat's 1024; docs/SCALE.md) [default: all].")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Fit how queries rank candidates and state confidence, on the database's own held-out places."""
    result = _calibrate(db, places, tuple(k or ()), seed, retrieval, progress, match_keypoints)
    if json_out:
        typer.echo(json.dumps(_calibration_summary(result), indent=2))
        return
    _print_calibration(result)


def _calibrate(db: Path, places: int, shortlists: tuple[int, ...], seed: int, retrieval: str,
               progress: bool, match_keypoints: int | None = None) -> "CalibrationResult":
    """Hold out places of the database, fit, and record the calibration (``glueloc calibrate``)."""
    from glueloc.api import calibrate_database
    from glueloc.query.calibrate import CalibrationOptions

    options = CalibrationOptions(places=places, seed=seed, match_keypoints=match_keypoints,
                                 **({"shortlists": tuple(sorted(set(shortlists)))} if shortlists else {}))
    with _progress(progress) as bar:
        task = bar.add_task("holding out places", total=None)
        return calibrate_database(db, options, retrieval,
                                  progress=lambda done, total: bar.update(task, completed=done, total=total))


def _calibration_summary(result: "CalibrationResult") -> dict[str, Any]:
    return {"calibration": result.calibration_id, "held_out": result.held_out, "near_radius": round(result.radius, 3),
            "k": result.k, "rule": result.rule, "match_keypoints": result.match_keypoints,
            "variants": result.metrics, "confidence": result.confidence,
            "weights": dict(zip(result.model.features, [round(float(w), 3) for w in result.model.weights])),
            "median_seconds_per_place": round(result.seconds_per_place, 3),
            "resection": None if result.bearings is None else {"fov": result.bearings.fov, "axes": result.bearings.axes},
            "resection_variants": result.resection, "choice": result.choice}


def _print_calibration(result: "CalibrationResult") -> None:
    from glueloc.query.calibrate import variant

    typer.echo(f"calibration {result.calibration_id}: {result.held_out} places held out, near radius "
               f"{result.radius:.2f}; queries will verify k = {result.k} and use rule {result.rule}"
               + ("" if result.match_keypoints is None else f", matching the {result.match_keypoints} strongest "
                                                             "keypoints of each image"))
    typer.echo("cross-validated on held-out places (rule@k):")
    chosen = variant(result.rule, result.k)
    for name, m in result.metrics.items():
        mark = "*" if name == chosen else " "
        typer.echo(f" {mark} {name:14s} MAE {m['mae']:.2f}  median {m['median']:.2f}  within 2 {m['within_2']:.0%}  "
                   f"> 20 units {m['gross_failures']}")
    _print_choices(result)
    c = result.confidence
    typer.echo(f"confidence: MAE of the most confident 50 % {c['mae_top_50']:.2f}, 80 % {c['mae_top_80']:.2f}, "
               f"all {c['mae_top_100']:.2f}; Spearman(confidence, error) {c['spearman_confidence_error']:.2f}")


def _calibration_status(db: Path) -> "CalibrationStatus":
    from glueloc.storage.database import open_database
    from glueloc.storage.inspect import calibration_status

    database = open_database(Layout.at(db))
    try:
        return calibration_status(database, DEFAULT_RETRIEVAL)
    finally:
        database.close()


def _calibration_line(status: "CalibrationStatus", db: Path) -> str:
    """After indexing: is the database calibrated for what it now holds, and what to run next."""
    if status.calibration_id is None:
        return (f"not calibrated: queries answer by most inliers, without resection. Next: `glueloc calibrate --db {db}` "
                f"(or `glueloc index ... --calibrate`), then `glueloc query PHOTO --db {db}`")
    if status.current:
        return (f"calibrated for its current {status.images} images (calibration {status.calibration_id}). "
                f"Next: `glueloc query PHOTO --db {db}`")
    return (f"calibration {status.calibration_id} was fitted on {status.fitted_on} images, the database now holds "
            f"{status.images}: queries still use it; refit with `glueloc calibrate --db {db}`")


def _choice_line(result: "CalibrationResult") -> str:
    """One line: whether the lowest held-out MAE beat most inliers beyond chance, and so was kept."""
    from glueloc.query.calibrate import variant

    choice = result.choice
    if not choice:
        return "rule: not compared with most inliers"
    lowest, baseline = choice["lowest"], choice["baseline"]
    if lowest == baseline:
        return f"rule: most inliers ({baseline}) had the lowest held-out MAE"
    mae = choice["answered"]
    verdict = "kept" if variant(result.rule, result.k) == lowest else f"not shown better: queries use {baseline}"
    return (f"rule: {lowest} against most inliers {baseline}, each with the camera it keeps: held-out MAE "
            f"{mae[lowest]:.2f} against {mae[baseline]:.2f}, one-sided paired p = {choice['p_value']:.3f} "
            f"(needs < {choice['significance']:g}); {verdict}")


def _resection_line(result: "CalibrationResult") -> str:
    """One line: the camera calibration chose for resection, or why it chose none."""
    from glueloc.query.calibrate import resection_variant, variant

    plain = result.metrics[variant(result.rule, result.k)]["mae"]
    if not result.resection:
        return "resection: not compared (no fields of view to try)"
    best = min(result.resection, key=lambda v: result.resection[v]["mae"])
    m = result.resection[best]
    if result.bearings is None:
        p_value = result.choice.get("resection_p_value", 1.0)
        why = f", not better beyond chance: p = {p_value:.3f}" if m["mae"] < plain else ""
        return f"resection: not used (best camera {best}: MAE {m['mae']:.2f}, the rule alone {plain:.2f}{why})"
    return (f"resection: {resection_variant(result.bearings)} (horizontal field of view in degrees, map axes): "
            f"MAE {m['mae']:.2f}  median {m['median']:.2f}  within 2 {m['within_2']:.0%} (the rule alone {plain:.2f}, "
            f"p = {result.choice.get('resection_p_value', 1.0):.3f})")


def _early_stop_line(result: "CalibrationResult") -> str:
    """One line: whether queries may stop verifying early, from the stop replayed on held-out places."""
    check = result.early_stop
    if check is None:
        return "early stop: not checked"
    from glueloc.query.calibrate import STOP_EVIDENCE

    if check.allowed:
        verdict = "allowed"
    elif check.fired < STOP_EVIDENCE:
        verdict = f"off (it fired on {check.fired} held-out places; it needs {STOP_EVIDENCE})"
    else:
        verdict = "off (it cost accuracy here)"
    return (f"early stop: {verdict}; held-out MAE {check.stopped['mae']:.2f} stopping at p >= {check.rule.above:g} "
            f"({check.pairs_mean:g} pairs on average) against {check.full['mae']:.2f} verifying all {result.k}")


def _print_choices(result: "CalibrationResult") -> None:
    """What a calibration chose beyond its headline, as `calibrate` and `demo` both print it."""
    typer.echo(_choice_line(result))
    typer.echo(_resection_line(result))
    typer.echo(_early_stop_line(result))
    if result.image_ranking.get("model_id") is not None:
        typer.echo(_image_ranking_line(result.image_ranking))


def _image_ranking_line(how: dict) -> str:
    """One line: whether the learned image ranking of held-out places came from a model that saw them."""
    parts = []
    if how["cross_fitted"]:
        parts.append(f"{how['cross_fitted']} by the projection fitted without their fold ({how['folds']} folds)")
    if how["not_trained_on"]:
        parts.append(f"{how['not_trained_on']} by the model (indexed after it was trained)")
    if how["in_sample"]:
        parts.append(f"{how['in_sample']} by a model trained on them (model {how['model_id']} has no cross-fitted "
                     "folds): held-out numbers are optimistic; `glueloc train`, then calibrate again")
    return "image ranking of held-out places: " + "; ".join(parts)


@app.command()
@user_errors()
def match(
    image0: Annotated[Path, typer.Argument(help="First image.")],
    image1: Annotated[Path, typer.Argument(help="Second image.")],
    matcher: Annotated[str, typer.Option(help="Pipeline: sift, aliked+lightglue, xfeat+lighterglue, superpoint+superglue.")] = DEFAULT_PIPELINE,
    geometry: Annotated[str, typer.Option(help="RANSAC model: fundamental or homography.")] = "fundamental",
    viz: Annotated[Optional[Path], typer.Option(help="Write a PNG of the matches here.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Match two images and count RANSAC inliers (optionally draw them)."""
    from glueloc.vision.pipelines import get_pipeline
    from glueloc.query.pair import match_files

    if geometry not in ("fundamental", "homography"):
        raise GluelocError(f"unknown geometry {geometry!r} (fundamental or homography)")
    pipeline = get_pipeline(matcher)
    result = match_files(image0, image1, pipeline, geometry)
    check = result.verification
    if viz is not None:
        from glueloc.viz import draw_matches, save_rgb

        points0, points1 = result.points()
        text = [f"{matcher}: {check.matches} matches, {check.inliers} inliers ({check.inlier_ratio:.0%})",
                f"{image0.name} | {image1.name}"]
        save_rgb(viz, draw_matches(result.images[0].rgb, result.images[1].rgb, points0, points1,
                                   result.matches.scores, check.inlier_mask, text))
    summary = {"pipeline": matcher, "image0": str(image0), "image1": str(image1),
               "keypoints": [len(result.features[0]), len(result.features[1])], "matches": check.matches,
               "inliers": check.inliers, "inlier_ratio": round(check.inlier_ratio, 4), "geometry": geometry,
               "seconds": result.seconds, "viz": str(viz) if viz else None}
    if json_out:
        typer.echo(json.dumps(summary, indent=2))
    else:
        typer.echo(f"{image0.name} <-> {image1.name} [{matcher}]: keypoints {summary['keypoints'][0]}/"
                   f"{summary['keypoints'][1]}, matches {check.matches}, inliers {check.inliers} "
                   f"({check.inlier_ratio:.0%}); seconds " + ", ".join(f"{k} {v:.3f}" for k, v in result.seconds.items()))
        if viz is not None:
            typer.echo(f"wrote {viz}")


@app.command()
@user_errors("nothing was written: the report and --json are written when every query is done")
def evaluate(
    labels: Annotated[Path, typer.Argument(help="CSV name,x,y of the queries (true positions).")],
    images: Annotated[Path, typer.Option("--images", help="Folder of the query images.")],
    db: DbOption = DEFAULT_DB,
    k: Annotated[Optional[int], typer.Option(min=1, help="Candidates to retrieve and verify [default: the calibration's, else 10].")] = None,
    collapse: Annotated[bool, typer.Option(help="Keep one image per capture position in the shortlist.")] = False,
    estimator: Annotated[str, typer.Option(help=ESTIMATOR_HELP)] = "auto",
    retrieval: Annotated[str, typer.Option(help=RETRIEVAL_HELP)] = DEFAULT_RETRIEVAL,
    resection: Annotated[bool, typer.Option(help=RESECTION_HELP)] = True,
    deepen_to: DeepenOption = DEEPEN_TO,
    verify_all: VerifyAllOption = False,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write metrics and per-query records here.")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Write a PNG: error histogram and map of true vs predicted.")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Locate every query of LABELS and report the error (MAE = mean |dx| + |dy|)."""
    import numpy as np

    from glueloc.viz import draw_errors, save_rgb
    from glueloc.core.labels import read_labels
    from glueloc.query.evaluate import evaluate as run_evaluation
    from glueloc.query.localizer import Localizer

    rows = read_labels(labels, images)
    with Localizer(Layout.at(db), _query_options(k, collapse, estimator, retrieval, resection, deepen_to, verify_all)) as localizer, _progress(progress) as bar:
        _note_uncalibrated(localizer, db)
        task = bar.add_task("querying", total=len(rows))
        result = run_evaluation(localizer, rows, progress=lambda n: bar.advance(task, n))
        db_xy = np.array([(i.x, i.y) for i in localizer.images.values()])
    if plot is not None:
        placed = [r for r in result.records if "true" in r and r["predicted"][0] is not None]
        save_rgb(plot, draw_errors(np.array([r["error"] for r in placed]), np.array([r["true"] for r in placed]),
                                   np.array([r["predicted"] for r in placed]), db_xy))
    if json_path:
        json_path.write_text(json.dumps({"metrics": result.metrics, "queries": result.records}, indent=2))
    typer.echo(" ".join(f"{key}={value}" for key, value in result.metrics.items()))


@app.command()
@user_errors("the rows already in the output CSV are kept; run the same command again to resume")
def predict(
    folder: Annotated[Path, typer.Argument(help="Folder of photos to locate.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="CSV to write: id,x,y,confidence (appended, resumable).")],
    db: DbOption = DEFAULT_DB,
    k: Annotated[Optional[int], typer.Option(min=1, help="Candidates to retrieve and verify [default: the calibration's, else 10].")] = None,
    collapse: Annotated[bool, typer.Option(help="Keep one image per capture position in the shortlist.")] = False,
    estimator: Annotated[str, typer.Option(help=ESTIMATOR_HELP)] = "auto",
    retrieval: Annotated[str, typer.Option(help=RETRIEVAL_HELP)] = DEFAULT_RETRIEVAL,
    resection: Annotated[bool, typer.Option(help=RESECTION_HELP)] = True,
    deepen_to: DeepenOption = DEEPEN_TO,
    verify_all: VerifyAllOption = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Locate every image in FOLDER into a CSV; run again to resume after an interruption."""
    from glueloc.query.localizer import Localizer
    from glueloc.query.predict import list_images, predict_folder

    total = len(list_images(folder))
    with Localizer(Layout.at(db), _query_options(k, collapse, estimator, retrieval, resection, deepen_to, verify_all)) as localizer, _progress(progress) as bar:
        _note_uncalibrated(localizer, db)
        task = bar.add_task("locating", total=total)
        summary = predict_folder(localizer, folder, output, progress=lambda n: bar.advance(task, n))
    for failure in summary.failures:
        typer.echo(f"failed: {failure}", err=True)
    typer.echo(f"{output}: wrote {summary.written} rows, kept {summary.resumed} from before, {len(summary.failures)} failed")
    if summary.failures:
        raise typer.Exit(1)


@app.command()
@user_errors("the service stopped; it never writes the database")
def serve(
    db: DbOption = DEFAULT_DB,
    host: Annotated[str, typer.Option(help="Address to bind; anything but loopback needs --token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
    token: Annotated[Optional[str], typer.Option(envvar="GLUELOC_SERVE_TOKEN",
                                                 help="Require this token in the X-Glueloc-Token header.")] = None,
    k: Annotated[Optional[int], typer.Option(min=1, help="Candidates to retrieve and verify [default: the calibration's, else 10].")] = None,
    retrieval: Annotated[str, typer.Option(help=RETRIEVAL_HELP)] = DEFAULT_RETRIEVAL,
    max_mb: Annotated[float, typer.Option(min=0.1, help="Largest request body, in MB.")] = 20.0,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds one request may take.")] = 30.0,
) -> None:
    """Serve localisation over HTTP with warm models and indexes, and a page to look at the answers."""
    from glueloc.serve import ServeOptions
    from glueloc.serve import serve as run_service

    options = ServeOptions(query=_query_options(k, False, "auto", retrieval), token=token,
                           max_bytes=int(max_mb * 1024 * 1024), timeout_seconds=timeout)
    typer.echo(f"glueloc serve: http://{host}:{port}/ answering from {db} (Ctrl-C stops)", err=True)
    run_service(Layout.at(db), host, port, options)


@app.command()
@user_errors()
def demo(
    workdir: Annotated[Path, typer.Option(help="Where the synthetic scene and its database go.")] = Path("demo-data"),
    places: Annotated[int, typer.Option(min=2, help="Capture points in the synthetic room.")] = 40,
    queries: Annotated[int, typer.Option(min=1, help="Held-out query views.")] = 12,
    seed: int = 0,
) -> None:
    """Render a synthetic room, index it, calibrate it, locate held-out views and print the error."""
    from glueloc.synthetic import write_dataset
    from glueloc.core.labels import read_labels
    from glueloc.indexer.pipeline import IndexOptions, IndexRunner
    from glueloc.query.evaluate import evaluate as run_evaluation
    from glueloc.query.localizer import Localizer

    data = write_dataset(workdir / "scene", n_places=places, n_queries=queries, seed=seed)
    typer.echo(f"rendered {data.labels_csv} and {data.queries_csv}")
    layout = Layout.at(workdir / "db")
    rows = read_labels(data.labels_csv, data.images_dir)
    summary = IndexRunner(layout, IndexOptions()).run(rows, data.images_dir, {"demo": str(workdir)})
    typer.echo(f"indexed: added {summary.added}, skipped {summary.skipped}, rejected {summary.rejected} "
               f"({summary.images_per_second:.1f} images/s)")
    from glueloc.storage.audit import audit as run_audit

    report = run_audit(layout)
    typer.echo(f"audit: {'clean' if report.clean else [f.message for f in report.errors]}")
    from glueloc.query.calibrate import MIN_PLACES, CalibrationOptions, variant

    if places >= MIN_PLACES:
        fitted = _calibrate(layout.root, places, (), 0, DEFAULT_RETRIEVAL, progress=False)
        shortest = min(CalibrationOptions().shortlists)
        chosen, plain = variant(fitted.rule, fitted.k), variant("inliers", shortest)
        typer.echo(f"calibrated on {fitted.held_out} held-out places: k {fitted.k}, rule {fitted.rule}, cross-validated "
                   f"MAE {fitted.metrics[chosen]['mae']:.2f} (most inliers of the top {shortest}: "
                   f"{fitted.metrics[plain]['mae']:.2f})")
        _print_choices(fitted)
    else:
        typer.echo(f"not calibrated: {places} places are fewer than the {MIN_PLACES} calibration needs")
    with Localizer(layout) as localizer:
        result = run_evaluation(localizer, read_labels(data.queries_csv, data.queries_dir))
    for record in result.records:
        typer.echo(f"  {record['name']}: true {record['true']} predicted "
                   f"[{record['predicted'][0]:.2f}, {record['predicted'][1]:.2f}] error {record['error']:.2f}")
    typer.echo("demo: " + " ".join(f"{key}={value}" for key, value in result.metrics.items()))
    if not report.clean:
        raise typer.Exit(1)


def run() -> None:
    app(prog_name="glueloc")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())
