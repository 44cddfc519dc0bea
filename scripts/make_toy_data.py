"""Write a small, deterministic instruction dataset for the quickstart and tests.

Task: reverse a random lowercase "word" of 3-6 letters::

    {"prompt": "Reverse the word: plane\\nAnswer: ", "generation": "enalp"}

The answer depends on every letter of the prompt (no constant answer works),
is short, and is checked by exact match. A tiny randomly initialised Llama
learns it from scratch in a couple of minutes on a CPU.

Records use the field name ``generation`` (not ``completion``) on purpose: it
mirrors a real-world dataset layout that the trainer has to map.

Usage::

    python scripts/make_toy_data.py --out data/toy [--seed 0] [--n-train 4000] [--n-eval 200]

writes ``train.jsonl`` and ``eval.jsonl``; no eval word occurs in train. The same records also
go to ``chat_train.jsonl`` / ``chat_eval.jsonl`` as two-exchange conversations for the chat
formatters::

    {"messages": [{"role": "system", "content": "Reverse each word."},
                  {"role": "user", "content": "plane"}, {"role": "assistant", "content": "enalp"},
                  {"role": "user", "content": "word"}, {"role": "assistant", "content": "drow"}]}

and, for preference training, ``pref_train.jsonl`` / ``pref_eval.jsonl`` (the capitalised answer
is preferred: ``{"prompt": ..., "chosen": "ENALP", "rejected": "enalp"}``), ``kto_train.jsonl``
(``{"prompt", "completion", "label"}``) and ``prompts_train.jsonl`` (``{"prompt", "answer"}``).
"""

from __future__ import annotations

import argparse
import json
import random
import string
import sys
from pathlib import Path
from typing import Any

PROMPT_TEMPLATE = "Reverse the word: {word}\nAnswer: "
MIN_LEN = 3
MAX_LEN = 6
DEFAULT_N_TRAIN = 4000
DEFAULT_N_EVAL = 200


def make_record(word: str) -> dict[str, str]:
    """Return the ``{"prompt", "generation"}`` record for ``word``."""
    return {"prompt": PROMPT_TEMPLATE.format(word=word), "generation": word[::-1]}


def sample_words(n: int, seed: int) -> list[str]:
    """Return ``n`` distinct random lowercase words of 3-6 letters, in a seeded order."""
    capacity = sum(26**k for k in range(MIN_LEN, MAX_LEN + 1))
    if n > capacity:
        raise ValueError(f"cannot draw {n} distinct words (at most {capacity})")
    rng = random.Random(seed)
    seen: set[str] = set()
    words: list[str] = []
    while len(words) < n:
        length = rng.randint(MIN_LEN, MAX_LEN)
        word = "".join(rng.choice(string.ascii_lowercase) for _ in range(length))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def make_splits(
    n_train: int = DEFAULT_N_TRAIN, n_eval: int = DEFAULT_N_EVAL, seed: int = 0
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Return ``(train, eval)`` records; the two splits share no word (hence no prompt)."""
    words = sample_words(n_train + n_eval, seed)
    eval_words, train_words = words[:n_eval], words[n_eval:]
    return [make_record(w) for w in train_words], [make_record(w) for w in eval_words]


SYSTEM = "Reverse each word."


def as_conversations(records: list[dict[str, str]]) -> list[dict[str, list[dict[str, str]]]]:
    """Pair consecutive records into conversations: system, then two user/assistant exchanges."""
    conversations = []
    for first, second in zip(records[::2], records[1::2], strict=False):
        messages = [{"role": "system", "content": SYSTEM}]
        for record in (first, second):
            word = record["generation"][::-1]
            messages += [
                {"role": "user", "content": word},
                {"role": "assistant", "content": record["generation"]},
            ]
        conversations.append({"messages": messages})
    return conversations


def as_preferences(records: list[dict[str, str]]) -> list[dict[str, str]]:
    """Preference pairs on the same prompts: the answer in capitals is preferred to the plain one
    (a preference the SFT task does not teach, learnt by DPO and its relatives)."""
    return [
        {"prompt": r["prompt"], "chosen": r["generation"].upper(), "rejected": r["generation"]}
        for r in records
    ]


def as_judged(records: list[dict[str, str]]) -> list[dict[str, Any]]:
    """KTO rows: alternately the capitalised answer (desirable) and the plain one (undesirable)."""
    return [
        {"prompt": r["prompt"], "completion": r["generation"].upper() if i % 2 == 0 else r["generation"],
         "label": i % 2 == 0}
        for i, r in enumerate(records)
    ]  # fmt: skip


def as_prompts(records: list[dict[str, str]]) -> list[dict[str, str]]:
    """GRPO prompts, with the expected answer as a column the reward functions receive."""
    return [{"prompt": r["prompt"], "answer": r["generation"]} for r in records]


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    """Write ``records`` as JSON lines (UTF-8, ``\\n`` line endings)."""
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> Path:
    """Command-line entry point; returns the output directory."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("data/toy"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=DEFAULT_N_TRAIN)
    parser.add_argument("--n-eval", type=int, default=DEFAULT_N_EVAL)
    args = parser.parse_args(argv)

    train, evals = make_splits(args.n_train, args.n_eval, args.seed)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "eval.jsonl", evals)
    write_jsonl(out / "chat_train.jsonl", as_conversations(train))
    write_jsonl(out / "chat_eval.jsonl", as_conversations(evals))
    write_jsonl(out / "pref_train.jsonl", as_preferences(train))
    write_jsonl(out / "pref_eval.jsonl", as_preferences(evals))
    write_jsonl(out / "kto_train.jsonl", as_judged(train))
    write_jsonl(out / "prompts_train.jsonl", as_prompts(train))
    print(f"wrote {len(train)} train and {len(evals)} eval records to {out}")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
