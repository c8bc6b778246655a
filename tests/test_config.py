import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from daamflow.config import ConfigError, load_config, train_settings, training_hyper, validate_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def default_config():
    return yaml.safe_load((ROOT / "config/config.yaml").read_text())


def test_default_config_is_valid_and_defaults_are_filled(default_config):
    config = validate_config(default_config)
    assert config["protocols"] == ["paper", "clean"]
    assert config["embed"]["layers"] == "blocks"
    assert config["datasets"]["prosody"]["modality"] == "audio"
    assert config["datasets"]["wordnet"]["evaluation"]["folds"] == 5


def test_schema_file_in_config_dir_is_the_package_schema():
    assert (ROOT / "config/schema.yaml").resolve() == (ROOT / "workflow/daamflow/schema.yaml").resolve()


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda c: c.update(unknown_key=1), "unknown_key"),
        (lambda c: c["datasets"]["wordnet"].update(folds=3), "datasets.wordnet"),
        (lambda c: c["datasets"]["wordnet"]["evaluation"].update(folds=1), "datasets.wordnet.evaluation.folds"),
        (lambda c: c.update(methods=["daam_v1", "transformer"]), "methods.1"),
        (lambda c: c.update(protocols=["paper", "dirty"]), "protocols.1"),
        (lambda c: c["datasets"]["fashion"].update(encoder="nope"), "datasets.fashion.encoder"),
        (lambda c: c["training"]["defaults"].update(lr=-1), "training.defaults.lr"),
        (lambda c: c["encoders"].update(x={"kind": "hub"}), "encoders.x.id"),
    ],
)
def test_bad_config_names_the_key(default_config, mutate, expected):
    mutate(default_config)
    with pytest.raises(ConfigError) as err:
        validate_config(default_config)
    assert expected in str(err.value)


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_hyper_parameter_precedence(default_config):
    bare = copy.deepcopy(default_config)
    bare.pop("training")
    config = validate_config(bare)
    speech, text = training_hyper(config, "prosody"), training_hyper(config, "wordnet")
    # the paper's per-modality defaults (docs/paper-notes.md#5-training-hyper-parameters) ...
    assert speech["batch_size"] == 8 and speech["loss"] == "focal" and speech["lr"] == 1e-4
    assert text["batch_size"] == 32 and text["loss"] == "cross_entropy" and text["lr"] == 5e-5
    assert speech["epochs"] == 35
    # ... overridden by the config's defaults, then its per-modality block, then the dataset
    config["training"] = {"defaults": {"lr": 1e-3, "epochs": 7}, "by_modality": {"audio": {"lr": 2e-3}}}
    assert training_hyper(config, "wordnet")["lr"] == 1e-3 and training_hyper(config, "prosody")["lr"] == 2e-3
    config["datasets"]["prosody"]["training"] = {"lr": 3e-3}
    assert training_hyper(config, "prosody")["lr"] == 3e-3 and training_hyper(config, "prosody")["epochs"] == 7


def test_train_settings_are_json_and_method_options_merge(default_config):
    default_config["method_options"] = {"daam_v1": {"num_heads": 2}}
    config = validate_config(default_config)
    s = train_settings(config, "wordnet", "daam_v1", "clean")
    assert s["model_options"] == {"conv_channels": 32, "num_heads": 2}
    assert train_settings(config, "wordnet", "mha", "clean")["model_options"] == {"conv_channels": 32}
    assert s["protocol"] == "clean" and s["encoder"] == "minilm"


def test_settings_round_trip_keeps_exponent_floats(tmp_path):
    from daamflow.config import read_settings, settings_json

    settings = {"lr": 5e-05, "nested": {"eps": 1e-08}}
    assert read_settings(settings_json(settings)) == settings
    path = tmp_path / "s.json"
    path.write_text(settings_json(settings))
    assert read_settings(str(path)) == settings


def test_strings_from_the_command_line_are_typed(default_config):
    # Snakemake hands `--config key=value` and profile values over as strings
    default_config["threads"] = "2"
    default_config["launcher"] = {"kind": "slurm", "gpus_per_task": "1", "mem_gb": "16", "partition": "None",
                                  "allow_nested": "True"}
    config = validate_config(default_config)
    assert config["threads"] == 2
    assert config["launcher"]["gpus_per_task"] == 1 and config["launcher"]["mem_gb"] == 16.0
    assert config["launcher"]["partition"] is None and config["launcher"]["allow_nested"] is True
    default_config["threads"] = "two"
    with pytest.raises(ConfigError, match="threads"):
        validate_config(default_config)


def test_config_command_shows_the_settings_of_the_job_that_runs_the_method():
    def show(method):
        return subprocess.run([sys.executable, "-m", "daamflow", "config", str(ROOT / "config/config.yaml"),
                               "--train", "wordnet", "paper", method], capture_output=True, text=True, timeout=120)

    head, lora = json.loads(show("daam_v1").stdout), json.loads(show("lora_r4@released").stdout)
    assert "model_options" in head and "finetune" not in head
    assert lora["label"] == "lora_r4@released" and lora["hyper"]["epochs"] == 2  # finetune.training, not the heads'
    assert all(lora["finetune"]["quirks"][q] for q in ("alpha_scaling", "released_targets", "frozen_head"))
    bad = show("lora")
    assert bad.returncode != 0 and "unknown method 'lora'" in bad.stderr


def test_schema_methods_are_the_heads_and_lora_names():
    import re

    from daamflow.catalog import LORA_PATTERN
    from daamflow.models.heads import METHODS

    names = yaml.safe_load((ROOT / "config/schema.yaml").read_text())["$defs"]["method_name"]["enum"]
    assert set(METHODS) <= set(names)
    assert all(re.fullmatch(LORA_PATTERN, m) for m in set(names) - set(METHODS))
