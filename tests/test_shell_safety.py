"""Paths reach the shell quoted: a results folder with a space and a command substitution in its name is used
literally by every rule's shell command, and nothing in it is executed."""
import shlex
from pathlib import Path

import pytest

from test_workflow import MICRO, ROOT, snakemake

HOSTILE = "out dir $(touch pwned)"


def shell_commands(output: str) -> list[str]:
    """The `Shell command:` lines of `snakemake -n -p` (rule all has none)."""
    prefix = "Shell command: "
    return [line[len(prefix):] for line in output.splitlines() if line.startswith(prefix) and line != prefix + "None"]


def test_every_shell_command_quotes_the_results_dir(tmp_path):
    results = f"{tmp_path}/{HOSTILE}"
    proc = snakemake("-n", "-p", "--config", f"results_dir={results}", timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    commands = shell_commands(proc.stdout + proc.stderr)
    stages = set()
    for command in commands:
        words = shlex.split(command)
        assert words[:2] == ["daamflow", "--usage"] and words[2].startswith(f"{results}/benchmarks/"), command
        stages.add(" ".join([words[0], *words[3:5]]))  # the stage, after the job's usage file
        # the shell splits the line into exactly these words: a path that was not quoted falls apart at the space
        mentions = [w for w in words if "pwned" in w or w in ("out", "dir", "$(touch")]
        assert mentions and all(f"{results}/" in w for w in mentions), command
        assert words[-3] == ">" and words[-1] == "2>&1", command
    # every stage of the default grid was looked at, the IF ablation's layer pairs and the summary's embeds included
    assert {"daamflow importance ablation", "daamflow report summary", "daamflow train --features"} <= stages
    assert len(stages) >= 15
    assert not (ROOT / "pwned").exists()


@pytest.mark.slow
def test_hostile_results_dir_runs_literally(tmp_path):
    results = tmp_path / HOSTILE
    target = results / "runs/wordnet/minilm/clean/mha/runs.csv"
    # the target first: --config takes every word after it
    proc = snakemake(str(target), "--cores", "1", "--configfile", str(MICRO), "--config", f"results_dir={results}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert target.exists() and (results / "features/wordnet/minilm/features.npy").exists()
    assert (results / "logs/train/wordnet_minilm_clean_mha.log").stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [HOSTILE]
    assert not (ROOT / "pwned").exists() and not list(tmp_path.rglob("pwned"))
