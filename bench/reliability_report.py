"""Print the reliability figures the slow suites wrote, as the tables in docs/RELIABILITY.md.

    make reliability          # runs tests/reliability (pytest -m slow), writes reliability-out/*.json
    python bench/reliability_report.py reliability-out
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

COMMANDS = {
    "kill_anywhere": "pytest -m slow tests/reliability/test_kill_anywhere.py",
    "bad_inputs": "pytest -m slow tests/reliability/test_bad_inputs.py",
    "concurrent_queries": "pytest -m slow tests/reliability/test_concurrency.py -k queries",
    "two_writers": "pytest -m slow tests/reliability/test_concurrency.py -k writers",
    "concurrent_queries_postgresql": "pytest -m slow tests/reliability/test_concurrency.py -k 'queries and postgresql'",
    "two_writers_postgresql": "pytest -m slow tests/reliability/test_concurrency.py -k 'writers and postgresql'",
    "disk_full_rlimit": "pytest -m slow tests/reliability/test_disk_full.py -k size_limit",
    "disk_full_tmpfs": "pytest -m slow tests/reliability/test_disk_full.py -k full_disk",
    "damaged_stores": "pytest -m slow tests/reliability/test_damaged_stores.py",
}


def short(text: str) -> str:
    """Drop what differs between runs (random file names, temporary paths)."""
    text = re.sub(r"(shard|global|faiss|codebook)-[0-9a-f]{32}", r"\1-…", text)
    return re.sub(r"sqlite:///\S+/|/tmp/\S+/", "", text)


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "reliability-out")
    print("| suite | figures | reproduce |")
    print("|---|---|---|")
    damaged: list[dict] = []
    for suite, command in COMMANDS.items():
        path = out / f"{suite}.json"
        if not path.exists():
            print(f"| {suite} | not run | `{command}` |")
            continue
        figures = json.loads(path.read_text())
        if suite == "damaged_stores":
            damaged = figures["rows"]
        shown = {k: v for k, v in figures.items() if k not in ("labels", "rows", "scenarios")}
        problems = shown.pop("problems", [])
        text = "; ".join(f"{k}: {v}" for k, v in shown.items())
        print(f"| {suite} | {text}; problems: {len(problems)} | `{command}` |")
    if damaged:
        print()
        print("| damage | audit exit | audit names | after `audit --repair` |")
        print("|---|---|---|---|")
        for row in damaged:
            if "audit after repair" in row:
                done = "; ".join(line.removeprefix("repair: ") for line in row["repair"]) or "nothing to do"
                after = "clean" if row.get("audit after repair") == 0 else "still reported (exit 1)"
                print(f"| {row['damage']} | {row['audit exit']} | {', '.join(row['codes'])} | {short(done)} → {after} |")
            else:
                print(f"| {row['damage']} | {row['audit exit']} | — | {short(' '.join(row.get('message', [])))} |")


if __name__ == "__main__":
    main()
