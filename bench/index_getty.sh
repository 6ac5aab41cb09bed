#!/usr/bin/env bash
# Index the Getty benchmark (4500 images) from nothing, index it again (everything must be
# skipped), then audit and deep-audit. Prints each command's summary line and wall time.
# Usage: bash bench/index_getty.sh [EXTRACTOR] [DB_DIR]   (default: sift, bench/out/getty-<extractor>)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
data=${GETTY_DIR:-$here/../shared/benchdata/getty}
extractor=${1:-sift}
db=${2:-$here/bench/out/getty-$extractor}
glueloc=${GLUELOC:-$here/.venv/bin/glueloc}
[ -f "$data/db.csv" ] || { echo "no Getty data at $data (set GETTY_DIR)" >&2; exit 2; }
rm -rf "$db"
TIMEFORMAT='  (%1R s wall)'
echo "== first run ($extractor, $(nproc) cores)"
time "$glueloc" index "$data/db.csv" --images "$data/db" --db "$db" --extractor "$extractor" --no-progress
echo "== second run (must skip all)"
time "$glueloc" index "$data/db.csv" --images "$data/db" --db "$db" --no-progress
echo "== audit"
time "$glueloc" audit --db "$db"
echo "== audit --deep"
time "$glueloc" audit --db "$db" --deep
du -sh "$db"/features "$db"/vectors "$db"/glueloc.sqlite
