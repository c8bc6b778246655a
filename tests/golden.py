"""Golden digests of a finished micro run: the proof that a refactoring changed no behaviour.

``digests(results)`` hashes every table, every ``runs.csv``, every ``metrics.json`` and ``summary.json`` of a results
folder, with the fields that legitimately change from run to run removed (wall times, the package versions and the
absolute results path). ``tests/test_workflow.py`` compares the micro run against ``tests/golden/micro.json``.

Re-record after a change that is *meant* to change results (and say so in the commit):

    python tests/golden.py record RESULTS_DIR      # RESULTS_DIR of a finished micro run
    python tests/golden.py compare RESULTS_DIR     # what differs, file by file
"""
from __future__ import annotations

import hashlib
import io
import json
import sys
from pathlib import Path

import pandas as pd

GOLDEN = Path(__file__).resolve().parent / "golden" / "micro.json"
# run-to-run noise, never results: timings, library versions, and where the results folder happens to be
VOLATILE_KEYS = {"wall_time_s", "versions", "seconds", "refit_wall_time_s"}
VOLATILE_COLUMNS = ["wall_time_s"]


def _scrub(obj, root: str):
    if isinstance(obj, dict):
        return {k: _scrub(v, root) for k, v in obj.items() if k not in VOLATILE_KEYS}
    if isinstance(obj, list):
        return [_scrub(v, root) for v in obj]
    if isinstance(obj, str):
        return obj.replace(root, "<results>")
    return obj


def _digest(path: Path, root: Path) -> str:
    if path.suffix == ".json":
        data = _scrub(json.loads(path.read_text()), str(root))
        payload = json.dumps(data, sort_keys=True).encode()
    elif path.name == "runs.csv":
        frame = pd.read_csv(path).drop(columns=VOLATILE_COLUMNS, errors="ignore")
        buffer = io.StringIO()
        frame.to_csv(buffer, index=False)
        payload = buffer.getvalue().encode()
    else:
        payload = path.read_bytes().replace(str(root).encode(), b"<results>")
    return hashlib.sha256(payload).hexdigest()


def watched(results: Path) -> list[Path]:
    """The files whose content is the run's behaviour: tables, run tables, per-fold metrics, the summary."""
    results = Path(results)
    files = [p for p in (results / "tables").rglob("*") if p.is_file() and p.suffix in (".csv", ".md", ".tex", ".json")]
    files += list((results / "runs").rglob("runs.csv")) + list((results / "runs").rglob("metrics.json"))
    return sorted(files)


def digests(results: Path) -> dict[str, str]:
    results = Path(results).resolve()
    return {str(p.relative_to(results)): _digest(p, results) for p in watched(results)}


def compare(results: Path, golden: Path = GOLDEN) -> list[str]:
    """Human-readable differences between a results folder and the recorded digests (empty when identical)."""
    recorded, now = json.loads(Path(golden).read_text()), digests(results)
    lines = [f"missing now: {k}" for k in sorted(set(recorded) - set(now))]
    lines += [f"new: {k}" for k in sorted(set(now) - set(recorded))]
    lines += [f"changed: {k}" for k in sorted(set(now) & set(recorded)) if now[k] != recorded[k]]
    return lines


if __name__ == "__main__":
    command, results = sys.argv[1], Path(sys.argv[2])
    if command == "record":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(digests(results), indent=1, sort_keys=True) + "\n")
        print(f"recorded {len(digests(results))} digests in {GOLDEN}")
    else:
        diff = compare(results)
        print("\n".join(diff) or "identical")
        sys.exit(1 if diff else 0)
