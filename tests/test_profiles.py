"""`snakemake --profile slurm` as the user types it (from the checkout, and from anywhere after `daamflow
install-profile`), the cores of a cluster profile kept, and a word when one config source replaces another."""
import json
import os
import shlex
import subprocess
import sys

import pytest
import yaml

from daamflow.cli.profiles import PROFILES, install_profile, precedence_warnings, replaced_values
from test_workflow import ROOT, snakemake

SLURM_MICRO = ROOT / "tests/slurm/micro.yaml"


def configfile(tmp_path):
    """tests/slurm/micro.yaml with a temporary results_dir (in the file: a --config would drop the profile's)."""
    config = yaml.safe_load(SLURM_MICRO.read_text())
    config["results_dir"] = str(tmp_path / "results")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def launcher_of_train_jobs(output: str) -> list[dict]:
    """The --launcher JSON of every train job in the output of `snakemake -n -p`."""
    prefix = "Shell command: "
    words = [shlex.split(line[len(prefix):]) for line in output.splitlines() if line.startswith(prefix + "daamflow ")]
    # `daamflow --usage FILE train ...`: the stage follows the job's usage file
    return [json.loads(w[w.index("--launcher") + 1]) for w in words if w[1:2] == ["--usage"] and w[3] == "train"]


def test_profile_by_name_from_the_checkout_root(tmp_path):
    proc = snakemake("-n", "-p", "--profile", "slurm", "--configfile", str(configfile(tmp_path)), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # a table job states no resources: it gets the profiles' defaults
    job = (proc.stdout + proc.stderr).split("rule parameter_table:", 1)[1].split("\n\n", 1)[0]
    assert "mem_mb=1000" in job and "runtime=10" in job
    launchers = launcher_of_train_jobs(proc.stdout + proc.stderr)
    assert len(launchers) == 2 and all(launcher["kind"] == "slurm" for launcher in launchers)


def test_both_profiles_set_the_same_default_resources():
    profiles = [yaml.safe_load((ROOT / f"profiles/{name}/config.yaml").read_text()) for name in ("default", "slurm")]
    assert profiles[0]["default-resources"] == profiles[1]["default-resources"] == ["mem_mb=1000", "runtime=10"]


def test_install_profile_then_by_name_from_anywhere(tmp_path):
    xdg = {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    args = ["-n", "-p", "-s", str(ROOT / "Snakefile"), "--profile", "slurm", "--configfile", str(configfile(tmp_path))]
    before = snakemake(*args, cwd=elsewhere, env=xdg, timeout=120)
    assert before.returncode != 0 and "no profile.yaml (or config.yaml) found" in before.stderr
    install = [sys.executable, "-m", "daamflow", "install-profile"]
    for _ in range(2):  # a second install of the same link is a no-op
        done = subprocess.run(install, cwd=elsewhere, env={**os.environ, **xdg}, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr
    link = tmp_path / "xdg/snakemake/slurm"
    assert link.is_symlink() and link.resolve() == (PROFILES / "slurm").resolve()
    after = snakemake(*args, cwd=elsewhere, env=xdg, timeout=120)
    assert after.returncode == 0, after.stderr[-3000:]
    assert [launcher["kind"] for launcher in launcher_of_train_jobs(after.stdout + after.stderr)] == ["slurm", "slurm"]


def test_install_never_replaces_another_profile(tmp_path):
    (tmp_path / "snakemake/slurm").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="--name"):
        install_profile(PROFILES / "slurm", "slurm", tmp_path / "snakemake")
    done = subprocess.run([sys.executable, "-m", "daamflow", "install-profile"], capture_output=True, text=True,
                          env={**os.environ, "XDG_CONFIG_HOME": str(tmp_path)}, timeout=60)
    assert done.returncode == 1 and f"{tmp_path / 'snakemake/slurm'} exists already" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "snakemake/slurm").is_symlink()
    assert install_profile(PROFILES / "slurm", "daamflow-slurm", tmp_path).resolve() == (PROFILES / "slurm").resolve()
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        install_profile(tmp_path, "empty", tmp_path)


@pytest.mark.slow
def test_cluster_profile_cores_are_not_overridden_by_the_workflow_profile(tmp_path):
    # a real (local, seconds) job, as Snakemake reports the cores it uses only when it runs something
    config = configfile(tmp_path)
    proc = snakemake(str(tmp_path / "results/tables/parameters.csv"), "--profile", "slurm", "--configfile", str(config),
                     timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Provided cores: 64" in proc.stdout + proc.stderr


def test_replaced_values_compares_as_text():
    base = {"launcher": {"kind": "slurm", "cpus_per_task": 1, "mem_gb": 1}, "seed": 0}
    assert replaced_values(base, {"launcher": {"kind": "slurm", "cpus_per_task": "4", "mem_gb": "1", "qos": "x"}}) == [
        "launcher.cpus_per_task: 1 -> 4"]


def test_warnings_name_what_the_profile_replaced_or_lost(tmp_path):
    profile = tmp_path / "prof"
    profile.mkdir()
    (profile / "config.yaml").write_text(yaml.safe_dump({"cores": 4, "config": {"launcher": {"kind": "slurm", "mem_gb": 16}}}))
    files = tmp_path / "c.yaml"
    files.write_text(yaml.safe_dump({"launcher": {"kind": "slurm", "mem_gb": 1}}))
    argv = ["--profile", str(profile), "--configfile", str(files)]
    [warning] = precedence_warnings(argv, {}, [files], {"launcher": {"kind": "slurm", "mem_gb": "16"}})
    assert "launcher.mem_gb: 1 -> 16" in warning and "kind" not in warning
    assert precedence_warnings(argv, {}, [files], {}) == []  # no profile config: nothing replaced
    [warning] = precedence_warnings([*argv, "--config", "launcher={mem_gb: 2}"], {}, [files], {"launcher": {"mem_gb": 2}})
    assert "NOT used: launcher.kind=slurm" in warning and "mem_gb" not in warning
    assert precedence_warnings(["--config", "seed=1"], {"SNAKEMAKE_PROFILE": str(profile)}, [], {"seed": 1})
    assert precedence_warnings(["--config", "seed=1"], {}, [], {"seed": 1}) == []


def test_dry_run_warns_about_the_issue_case(tmp_path):
    config = configfile(tmp_path)
    proc = snakemake("-n", "--profile", "slurm", "--configfile", str(config), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "launcher.cpus_per_task: 1 -> 4" in out and "launcher.mem_gb: 1 -> 16" in out
    proc = snakemake("-n", "--profile", "slurm", "--configfile", str(config), "--config", "seed=1", timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "NOT used: launcher.kind=slurm" in proc.stdout + proc.stderr
