"""Run the 2-process FSDP2 and ZeRO-3 train commands many times, optionally with another process
busy on a core, and count the runs that do not end cleanly (exit status 0, final model saved).

This is how the end of multi-process runs was shown to be deterministic (an earlier version let
gloo's threads abort one process at interpreter exit, after the run had finished and saved):

    python scripts/stress_distributed_exit.py --rounds 30 --load
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
BACKENDS = {"fsdp2": {"type": "fsdp", "version": 2}, "zero3": {"type": "deepspeed", "stage": 3}}


def busy() -> None:
    while True:
        pass


def config(model: Path, data: Path, out: Path, block: dict) -> dict:
    return {
        "base_model": str(model),
        "datasets": [{"path": str(data), "type": "prompt_completion", "completion_field": "generation"}],
        "sequence_len": 48,
        "max_train_samples": 16,
        "micro_batch_size": 2,
        "max_steps": 4,
        "lr_scheduler": "constant",
        "save_strategy": "no",
        "logging_steps": 1,
        "training_curves": False,
        "output_dir": str(out),
        "distributed": {**block, "num_processes": 2},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="runs of each backend (default 30)")
    parser.add_argument("--load", action="store_true", help="keep another process busy on a core")
    parser.add_argument("--backends", default="fsdp2,zero3")
    args = parser.parse_args(argv)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    loader = multiprocessing.Process(target=busy, daemon=True) if args.load else None
    if loader:
        loader.start()
    failures: dict[str, int] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            subprocess.run(
                [sys.executable, str(REPO / "scripts/make_tiny_model.py"), "--out", str(work / "m")],
                check=True,
                env=env,
                capture_output=True,
            )
            subprocess.run(
                [sys.executable, str(REPO / "scripts/make_toy_data.py"), "--out", str(work / "d")],
                check=True,
                env=env,
                capture_output=True,
            )
            for n in range(args.rounds):
                for name in args.backends.split(","):
                    out = work / f"{name}-{n}"
                    cfg = out.with_suffix(".yml")
                    cfg.write_text(
                        yaml.safe_dump(config(work / "m", work / "d/train.jsonl", out, BACKENDS[name]))
                    )
                    start = time.monotonic()
                    done = subprocess.run(
                        [sys.executable, "-m", "trainer.cli.train", str(cfg)],
                        cwd=REPO,
                        env=env,
                        capture_output=True,
                        text=True,
                    )
                    ok = done.returncode == 0 and (out / "model.safetensors").is_file()
                    aborted = "terminate called" in done.stderr
                    print(
                        json.dumps(
                            {
                                "backend": name,
                                "round": n + 1,
                                "exit": done.returncode,
                                "ok": ok,
                                "abort_seen": aborted,
                                "seconds": round(time.monotonic() - start, 1),
                            }
                        ),
                        flush=True,
                    )
                    if not ok or aborted:
                        failures[name] = failures.get(name, 0) + 1
                        print(done.stderr[-3000:], file=sys.stderr, flush=True)
    finally:
        if loader:
            loader.terminate()
    print(f"{args.rounds} rounds of {args.backends} (load: {args.load}): failures {failures or 'none'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
