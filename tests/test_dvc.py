"""DVC versions the workflow's results (docs/architecture.md#8-versioning), end to end on a copy of this repository and a micro config.

repro → push → fresh clone → pull → restore modification times → the tables are regenerated without any training or
extraction job and are bit-identical; `dvc status` is clean; `dvc exp run -S` on a config key and `dvc metrics diff`
show the changed metric. The copy is a new git repository holding this working tree's files (tracked and untracked,
not ignored), so the test sees the current code without touching this repository.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "tests/configs/micro.yaml"
OUTS = {"data", "encoders", "features", "runs", "importance", "probes", "vqvae", "figures", "tables"}
HEAVY_RULES = {"prepare", "encoder", "embed", "train", "finetune", "ablate", "probe", "vqvae_train"}

pytestmark = pytest.mark.slow  # about a minute and a half on 2 cores


def micro_dvc_config() -> dict:
    """tests/configs/micro.yaml trimmed to one dataset (standing in for CIFAR-100), 2 methods, 2 runs, 1 epoch."""
    config = yaml.safe_load(MICRO.read_text())
    fashion = {**config["datasets"]["fashion"], "paper_dataset": "cifar100"}
    fashion["evaluation"] = {"scheme": "seeds", "runs": 2}
    return {
        **config,
        "results_dir": "results",  # dvc.yaml's outputs
        "datasets": {"fashion": fashion},
        "encoders": {fashion["encoder"]: config["encoders"][fashion["encoder"]]},
        "methods": ["daam_v1", "mha"],
        "protocols": ["paper"],
        "training": {"defaults": {"epochs": 1, "lr": 0.01}},
    }


def run(cmd: list[str], cwd: Path, timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess:
    env = {
        **os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1",
        "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org",
    }
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def copy_worktree(dest: Path) -> None:
    """This working tree's files (tracked and untracked, not ignored) without .dvc/, which `dvc init` makes."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    for name in sorted(set(filter(None, listed.split("\0")))):
        src = ROOT / name
        if name.startswith(".dvc/") or not (src.exists() or src.is_symlink()):
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            target.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, target)


def executed_rules(snakemake_output: str) -> set[str]:
    return set(re.findall(r"^(?:local)?rule (\w+):", snakemake_output, flags=re.M)) - {"all"}


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A git repository with the workflow, `dvc init`, a local remote, one `dvc repro` committed and pushed."""
    base = tmp_path_factory.mktemp("dvc")
    repo, remote = base / "repo", base / "remote"
    repo.mkdir()
    copy_worktree(repo)
    (repo / "config/config.yaml").write_text(yaml.safe_dump(micro_dvc_config(), sort_keys=False))
    run(["git", "init", "-q"], repo)
    run(["dvc", "init", "-q"], repo)  # `dvc init` works in a git repository that already has .dvcignore
    run(["dvc", "remote", "add", "-d", "local", str(remote)], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "workflow"], repo)
    start = time.monotonic()
    repro = run(["dvc", "repro"], repo, timeout=900)
    elapsed = time.monotonic() - start
    run(["git", "add", "dvc.lock"], repo)
    run(["git", "commit", "-qm", "results"], repo)
    run(["dvc", "push", "-q"], repo)
    return {"repo": repo, "remote": remote, "base": base, "repro": repro, "repro_s": elapsed}


def test_repro_tracks_every_result_folder(repo):
    results = repo["repo"] / "results"
    assert set(os.listdir(results)) - {"logs", "benchmarks"} <= OUTS  # nothing Snakemake needs is left untracked
    lock = yaml.safe_load((repo["repo"] / "dvc.lock").read_text())["stages"]["workflow"]
    assert {o["path"] for o in lock["outs"]} == {f"results/{d}" for d in OUTS}
    assert lock["params"]["config/config.yaml"]["methods"] == ["daam_v1", "mha"]
    assert (results / "tables/fashion_paper_vs_paper.md").read_text().count("STAND-IN") == 1
    assert "## The paper's claims" in (results / "tables/summary.md").read_text()
    assert run(["dvc", "status"], repo["repo"]).stdout.strip() == "Data and pipelines are up to date."


def test_pull_on_a_fresh_clone_restores_without_recomputation(repo):
    clone = repo["base"] / "clone"
    run(["git", "clone", "-q", str(repo["repo"]), str(clone)], repo["base"])
    assert not (clone / "results").exists()
    run(["dvc", "pull", "-q"], clone)
    assert run(["dvc", "status"], clone).stdout.strip() == "Data and pipelines are up to date."
    pulled = tree_bytes(clone / "results/tables")
    assert pulled == tree_bytes(repo["repo"] / "results/tables")
    # DVC does not keep modification times: the documented restore step re-dates every output in DAG order and
    # records Snakemake's provenance, after which nothing is out of date
    run(["snakemake", "--touch", "--forceall", "--cores", "1"], clone)
    assert "Nothing to be done" in run(["snakemake", "-n"], clone).stdout
    # regenerate every table from the pulled runs: only report jobs run, and they give the same bytes
    shutil.rmtree(clone / "results/tables")
    proc = run(["snakemake", "--cores", "2"], clone)
    ran = executed_rules(proc.stdout + proc.stderr)
    assert ran and not ran & HEAVY_RULES, ran
    # a job that runs writes a benchmark; `--touch` only leaves empty logs
    assert os.listdir(clone / "results/benchmarks") == ["report"]
    assert tree_bytes(clone / "results/tables") == pulled
    assert run(["dvc", "status"], clone).stdout.strip() == "Data and pipelines are up to date."
    report = clone / "results/report.html"
    run(["snakemake", "--report", str(report)], clone)  # offline: the report's assets ship with Snakemake
    assert "claims.csv" in report.read_text()


def test_exp_run_and_metrics_diff(repo):
    repo_dir = repo["repo"]
    proc = run(["dvc", "exp", "run", "-S", "config/config.yaml:datasets.fashion.evaluation.runs=3"], repo_dir,
               timeout=900)
    ran = executed_rules(proc.stdout + proc.stderr)
    assert "train" in ran and not ran & {"prepare", "encoder", "embed"}, ran  # features are reused
    assert yaml.safe_load((repo_dir / "config/config.yaml").read_text())["datasets"]["fashion"]["evaluation"]["runs"] == 3
    diff = json.loads(run(["dvc", "metrics", "diff", "--json"], repo_dir).stdout)
    summary = diff["results/tables/summary.json"]
    assert summary["fashion.paper.daam_v1.n"] == {"old": 2, "new": 3, "diff": 1}
    params = json.loads(run(["dvc", "params", "diff", "--json"], repo_dir).stdout)["config/config.yaml"]
    assert params == {"datasets.fashion.evaluation.runs": {"old": 2, "new": 3, "diff": 1}}


def test_no_rule_calls_dvc():
    """DVC locks the repository: it runs Snakemake, never the other way round."""
    locking = re.compile(r"\bdvc\s+(repro|add|commit|checkout|pull|push|fetch|exp|run|gc|remove|move|import|stage)\b")
    for path in [ROOT / "Snakefile", *(ROOT / "rules").glob("*.smk"), *(ROOT / "workflow/daamflow").rglob("*.py")]:
        assert not locking.search(path.read_text()), path


def test_dvc_yaml_and_config():
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    workflow = stage["stages"]["workflow"]
    assert any(cmd.startswith("snakemake") for cmd in workflow["cmd"])
    assert all((ROOT / dep).exists() for dep in workflow["deps"])
    outs = {next(iter(o)): o[next(iter(o))] or {} for o in workflow["outs"]}
    assert set(outs) == {f"results/{d}" for d in OUTS}
    assert all(v.get("persist") for k, v in outs.items() if k != "results/tables")
    assert not outs["results/tables"].get("persist") and outs["results/tables"].get("cache", True)
    assert stage["metrics"] == ["results/tables/summary.json", "results/tables/claims.json"]
    dvc_config = ROOT / ".dvc/config"
    if dvc_config.exists():  # committed by `dvc init`: analytics off, the repository-local default remote
        text = dvc_config.read_text()
        assert "analytics = false" in text and "remote = local" in text
