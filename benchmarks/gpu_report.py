"""Print the GPU checks' report: the JSON that tests/test_gpu.py writes to ``$DAAMFLOW_GPU_REPORT``.

    python benchmarks/gpu_report.py REPORT.json [--budget-s 480]

The first line names the device the checks ran on; then one line per check: PASS/FAIL, its numbers, its tolerance,
its wall time and the peak GPU memory of its stage (n/a on a CPU). scripts/gpu-check.sh runs the checks and this.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SHOWN_APART = ("name", "passed", "seconds", "peak_mib", "tolerance")  # the columns every check has


def device_line(device: dict) -> str:
    if device["device"].startswith("cuda"):
        return (f"device: {device['device']} = {device['name']} ({device['memory_gib']} GiB, compute capability "
                f"{device['capability']}, bfloat16 {'supported' if device['bf16'] else 'NOT supported: float16'}); "
                f"torch {device['torch']}, CUDA {device['cuda']}")
    return (f"device: {device['device']} = {device['name']}; torch {device['torch']}. NOT a GPU: "
            f"DAAMFLOW_GPU_CHECK_DEVICE={device['opt_in']} ran the GPU code paths here (bfloat16 extraction, bfloat16 "
            f"autocast in training), so peak GPU memory is n/a and speeds are the CPU's")


def check_lines(checks: list[dict]) -> list[str]:
    lines = []
    for check in checks:
        numbers = ", ".join(f"{key} {value}" for key, value in check.items() if key not in SHOWN_APART)
        peak = "n/a" if check.get("peak_mib") is None else f"{check['peak_mib']:.0f} MiB"
        lines.append(f"{'PASS' if check['passed'] else 'FAIL'}  {check['name']}: {check.get('seconds', '?')} s, "
                     f"peak GPU memory {peak}")
        lines.append(f"      {numbers}")
        lines.append(f"      tolerance: {check['tolerance']}")
    return lines


def render(report: dict, budget_s: float) -> str:
    checks = report["checks"]
    failed = [check["name"] for check in checks if not check["passed"]]
    on_gpu = report["device"]["device"].startswith("cuda")
    lines = [device_line(report["device"]), ""] + check_lines(checks) + [""]
    lines.append(f"{len(checks) - len(failed)} of {len(checks)} checks passed"
                 + (f"; FAILED: {', '.join(failed)}" if failed else "")
                 + f". Checks' wall time {report['wall_s']} s"
                 + (f" (budget {budget_s:.0f} s on one GPU{': OVER' if report['wall_s'] > budget_s else ''})"
                    if on_gpu else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="the JSON file tests/test_gpu.py wrote ($DAAMFLOW_GPU_REPORT)")
    parser.add_argument("--budget-s", type=float, default=480, help="wall-time budget of the checks on one GPU")
    args = parser.parse_args(argv)
    if not args.report.is_file():
        print(f"no report at {args.report}: no check ran (every one skipped, or pytest stopped before the first); "
              "see pytest's output")
        return 1
    print(render(json.loads(args.report.read_text()), args.budget_s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
