"""Helpers shared by the benchmark scripts in this folder (overhead.py, preprocess.py, throughput.py).

Each benchmark runs every measured run in a fresh subprocess with its own environment and log file,
registers its measuring callback the way a third-party plugin is registered (a module plus
entry-point metadata in a directory put on PYTHONPATH), and keeps its files in a work directory that
is a temporary one unless `--work-dir` names one. The pieces of that which are the same in every
script live here. The scripts import this module as `benchlib` (run as `python bench/<name>.py`, the
script's folder is `sys.path[0]`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"


def install_callback_plugin(
    work: Path, module_name: str, source: str, dist_name: str, entry_point_line: str
) -> Path:
    """Write a `trainer.callbacks` plugin into `work/plugin`, a directory for PYTHONPATH: the module
    `module_name` with `source`, and the entry-point metadata of a distribution `dist_name` (version 0)
    declaring `entry_point_line` (`name = module:Class`). Returns the directory."""
    site = work / "plugin"
    dist_info = site / f"{dist_name.replace('-', '_')}-0.dist-info"
    dist_info.mkdir(parents=True, exist_ok=True)
    (site / f"{module_name}.py").write_text(source, encoding="utf-8")
    metadata = f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: 0\n"
    (dist_info / "METADATA").write_text(metadata, encoding="utf-8")
    entry_points = f"[trainer.callbacks]\n{entry_point_line}\n"
    (dist_info / "entry_points.txt").write_text(entry_points, encoding="utf-8")
    return site


def child_env(threads: int, datasets_cache: Path, site: Path | None = None) -> dict[str, str]:
    """This process's environment for a measured child: `threads` OpenMP/MKL threads, no tokenizers
    parallelism, offline, its own `datasets` cache (empty per run: no run reuses cached work), no
    wandb; `site` (if given) first on PYTHONPATH."""
    env = dict(os.environ)
    if site is not None:
        path = [str(site), env["PYTHONPATH"]] if env.get("PYTHONPATH") else [str(site)]
        env["PYTHONPATH"] = os.pathsep.join(path)
    env.update(
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_DATASETS_CACHE=str(datasets_cache),
        WANDB_DISABLED="true",
    )
    return env


def run_child(
    command: list[str], env: dict[str, str], log: Path, fail: bool = True, cwd: Path = REPO
) -> tuple[int, float, float]:
    """Run a command in `cwd` (the repository) to completion, its output into `log`; returns (exit
    status, wall seconds, CPU seconds of it and its children). Exits with the log's tail on failure
    if `fail`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with log.open("w", encoding="utf-8") as handle:
        code = subprocess.call(command, env=env, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if code != 0 and fail:
        sys.exit(
            f"command failed with exit status {code}: {' '.join(command)}\n--- {log} (tail)\n{tail(log)}"
        )
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return code, wall, cpu


def tail(log: Path, lines: int = 40) -> str:
    """The last `lines` lines of a log file, line endings kept."""
    return "".join(log.read_text(encoding="utf-8", errors="replace").splitlines(True)[-lines:])


def versions() -> dict[str, str]:
    """Versions of torch, transformers, trl and datasets (asked of a fresh interpreter) and Python."""
    names = ("torch", "transformers", "trl", "datasets")
    code = f"import {', '.join(names)}; print({', '.join(n + '.__version__' for n in names)})"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {**dict(zip(names, out.stdout.split(), strict=True)), "python": platform.python_version()}


@contextlib.contextmanager
def work_dir(keep: Path | None, prefix: str) -> Iterator[Path]:
    """The work directory (absolute): `keep`, created if needed and left in place, or else a new
    temporary directory named `prefix...`, removed at the end."""
    work = (keep or Path(tempfile.mkdtemp(prefix=prefix))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    try:
        yield work
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)


def write_json(path: Path, args: argparse.Namespace, hidden: tuple[str, ...], **record: Any) -> None:
    """Write `{"settings": the command-line arguments as strings, **record}` to `path`, indented;
    arguments whose names start with one of `hidden` (the internal child modes) are left out."""
    settings = {k: str(v) for k, v in vars(args).items() if not k.startswith(hidden)}
    path.write_text(json.dumps({"settings": settings, **record}, indent=2), encoding="utf-8")
