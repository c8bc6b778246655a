"""Snakemake profiles of the workflow: install the SLURM profile under Snakemake's own search path, and say when one
source of config values silently replaces another.

Snakemake's rule for config values, key by key: the Snakefile's default config < ``--configfile`` < a profile's
``config:`` < ``--config`` on the command line; and a ``--config`` on the command line replaces a profile's whole
``config:`` entry (the profile only provides the default of that option). Nothing is said by Snakemake when either
happens; :func:`precedence_warnings` says it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from daamflow import CHECKOUT

# the workflow's own profiles folder, beside the package's source tree in a checkout
PROFILES = CHECKOUT / "profiles"


def snakemake_profile_dir() -> Path:
    """Where Snakemake looks for a profile given by name after the working directory (~/.config/snakemake)."""
    from snakemake.common import get_appdirs

    return Path(get_appdirs().user_config_dir)


def install_profile(source: Path, name: str, dest_root: Path | None = None) -> Path:
    """Link the profile folder ``source`` as ``<dest_root>/<name>`` so that ``--profile <name>`` finds it anywhere.

    A link, not a copy: the profile stays the checkout's file (edited there, updated with the workflow). An existing
    entry of that name is never replaced unless it already is this link.
    """
    source = Path(source).resolve()
    if not (source / "config.yaml").is_file():
        raise FileNotFoundError(f"{source} holds no config.yaml: not a Snakemake profile folder")
    dest = Path(dest_root or snakemake_profile_dir()) / name
    if dest.is_symlink() and dest.resolve() == source:
        return dest
    if dest.exists() or dest.is_symlink():
        raise FileExistsError(f"{dest} exists already (another profile named {name!r}?): remove it, or install "
                              f"this one under another name with --name")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.symlink_to(source, target_is_directory=True)
    return dest


def _leaves(values: Mapping, prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in values.items():
        if isinstance(value, Mapping) and value:
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _lookup(values: Mapping, dotted: str) -> tuple[bool, Any]:
    for key in dotted.split("."):
        if not isinstance(values, Mapping) or key not in values:
            return False, None
        values = values[key]
    return True, values


def replaced_values(base: Mapping, overrides: Mapping) -> list[str]:
    """``key: old -> new`` for every leaf of ``overrides`` that changes a value ``base`` set.

    Values are compared as text: a profile hands its values over as strings ('4' for 4).
    """
    lines = []
    for key, new in _leaves(overrides):
        found, old = _lookup(base, key)
        if found and str(old) != str(new):
            lines.append(f"{key}: {old} -> {new}")
    return lines


def _option_values(argv: list[str], *names: str) -> list[str]:
    """Every value of the options ``names`` on a command line (``--opt V`` and ``--opt=V``; nargs=1 options)."""
    values = []
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if name in names:
            if eq:
                values.append(value)
            elif i + 1 < len(argv):
                values.append(argv[i + 1])
    return values


def config_on_command_line(argv: list[str]) -> bool:
    return any(arg.partition("=")[0] in ("--config", "-C") for arg in argv)


def profile_config(argv: list[str], environ: Mapping[str, str]) -> dict:
    """The ``config:`` that the profiles of a Snakemake command line give (a later profile's replaces an earlier's)."""
    from snakemake.cli import get_profile_dir

    names = _option_values(argv, "--profile") or ([environ["SNAKEMAKE_PROFILE"]] if environ.get("SNAKEMAKE_PROFILE") else [])
    config: dict = {}
    for name in names:
        found = get_profile_dir(name) if name != "none" else None
        if found:
            entry = (yaml.safe_load(found[1].read_text()) or {}).get("config")
            config = entry if isinstance(entry, dict) else config
    return config


def precedence_warnings(argv: list[str], environ: Mapping[str, str], configfiles: list[Path],
                        config_args: Mapping) -> list[str]:
    """The warnings a Snakemake command line deserves: a profile's ``config:`` replacing values of the configfiles,
    or a command-line ``--config`` dropping a profile's ``config:``."""
    if config_on_command_line(argv):
        dropped = [f"{key}={value}" for key, value in _leaves(profile_config(argv, environ))
                   if not _lookup(config_args, key)[0]]
        if not dropped:
            return []
        return [
            "the --config on the command line replaces the profile's whole `config:` (Snakemake's rule), so these "
            f"profile settings are NOT used: {', '.join(dropped)}. Put the command line's settings in a --configfile "
            "instead, or repeat these in the --config."
        ]
    from_files: dict = {}
    for path in configfiles:
        from_files = _merge(from_files, yaml.safe_load(Path(path).read_text()) or {})
    replaced = replaced_values(from_files, config_args)
    if not replaced:
        return []
    return [
        "the profile's `config:` replaces what the configfile set (Snakemake's rule: profile config: > "
        f"--configfile, key by key): {'; '.join(replaced)}. Remove these keys from the profile's `config:` to keep "
        "the configfile's values."
    ]


def _merge(base: dict, update: Mapping) -> dict:
    """``update`` merged into a copy of ``base`` key by key (as Snakemake merges configfiles)."""
    merged = dict(base)
    for key, value in update.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, Mapping) and isinstance(merged.get(key), dict) else value
    return merged


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", type=Path, default=PROFILES / "slurm", help="the profile folder to install "
                        "(default: this checkout's profiles/slurm)")
    parser.add_argument("--name", default="slurm", help="the name to type after --profile (default: slurm)")


def main(args: argparse.Namespace) -> int:
    try:
        dest = install_profile(args.profile, args.name)
    except OSError as err:  # an existing entry, or not a profile folder: a message, not a traceback
        print(f"daamflow install-profile: {err}", file=sys.stderr)
        return 1
    print(f"{dest} -> {args.profile.resolve()}: `snakemake --profile {args.name}` now finds it from any folder",
          file=sys.stderr)
    return 0
