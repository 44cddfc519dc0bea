"""Prompts in, text out: render a prompt as the run was trained (chat template or raw text), generate
for many prompts at once (left-padded batches) or stream one answer token by token.

Generation stops at the tokenizer's EOS, the chat template's end-of-turn token, or a stop string
(cut from the text, as OpenAI's API does). Greedy unless a temperature above 0 is given.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from trainer.inference.load import Loaded

Messages = list[dict[str, Any]]


class PromptError(ValueError):
    """A prompt this model cannot take (chat messages without a template, too long): the caller's fault."""


@dataclass
class Sampling:
    """Decoding options, named as on the command line."""

    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    repetition_penalty: float = 1.0
    num_return_sequences: int = 1
    seed: int | None = None
    stop: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        out = []
        if self.max_new_tokens < 1:
            out.append(f"max_new_tokens must be at least 1 (got {self.max_new_tokens})")
        if self.temperature < 0:
            out.append(f"temperature must be >= 0 (got {self.temperature})")
        if not 0 < self.top_p <= 1:
            out.append(f"top_p must be in (0, 1] (got {self.top_p})")
        if self.top_k < 0:
            out.append(f"top_k must be >= 0 (got {self.top_k})")
        if self.repetition_penalty <= 0:
            out.append(f"repetition_penalty must be > 0 (got {self.repetition_penalty})")
        if self.num_return_sequences < 1:
            out.append(f"num_return_sequences must be at least 1 (got {self.num_return_sequences})")
        if self.seed is not None and not 0 <= self.seed < 2**32:
            out.append(f"seed must be in 0..2**32-1 (got {self.seed})")
        if any(not s for s in self.stop):
            out.append("a stop string cannot be empty")
        return out

    def generation_config(self, loaded: Loaded) -> Any:
        """A GenerationConfig from the model's own (its EOS ids kept) with these options on top."""
        import copy

        config = copy.deepcopy(loaded.model.generation_config)
        sampling = self.temperature > 0
        config.do_sample = sampling
        config.temperature = self.temperature if sampling else None
        config.top_p = self.top_p if sampling else None
        config.top_k = self.top_k if sampling else None  # 0, not None: None means transformers' default 50
        config.repetition_penalty = self.repetition_penalty
        config.max_new_tokens = self.max_new_tokens
        config.max_length = None
        config.num_return_sequences = self.num_return_sequences
        config.eos_token_id = loaded.stop_token_ids or config.eos_token_id
        config.pad_token_id = loaded.tokenizer.pad_token_id
        config.stop_strings = stops(loaded, self) or None
        return config


@dataclass
class Completion:
    """One generated answer."""

    text: str
    tokens: int  # generated tokens counted, up to and including the one that stopped it
    finish_reason: str  # "stop" (EOS, end of turn or a stop string) or "length"


def stops(loaded: Loaded, sampling: Sampling) -> list[str]:
    """Stop strings: the caller's, then the model's end-of-turn markers that are not one token."""
    return list(dict.fromkeys([*sampling.stop, *loaded.stop_strings]))


def prompt_text(loaded: Loaded, prompt: str | Messages, system: str | None = None) -> str:
    """The prompt as the model sees it: rendered with the chat template (a string becomes one user
    turn, `system` is prepended) or, in raw mode, the string itself."""
    if not loaded.chat:
        if not isinstance(prompt, str):
            raise PromptError(
                "chat messages need a chat template, but this model's prompts are raw text "
                "(its tokenizer has no template, or --raw)"
            )
        return prompt
    messages: Messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system is not None and not (messages and messages[0].get("role") == "system"):
        messages = [{"role": "system", "content": system}, *messages]
    try:
        return str(loaded.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    except Exception as err:  # jinja errors of a template on these messages
        raise PromptError(f"the chat template cannot render these messages: {err}") from None


def prompt_ids(loaded: Loaded, prompt: str | Messages, system: str | None = None) -> list[int]:
    """Token ids of the rendered prompt: raw text with the tokenizer's special tokens (BOS) as
    training added them; a rendered chat template as it stands (it writes its own)."""
    text = prompt_text(loaded, prompt, system)
    ids: list[int] = loaded.tokenizer(text, add_special_tokens=not loaded.chat).input_ids
    return ids


def check_length(loaded: Loaded, ids: list[int], max_new_tokens: int) -> None:
    """PromptError when the prompt alone does not fit the model's context."""
    limit = loaded.context_length
    if limit is not None and len(ids) >= limit:
        raise PromptError(
            f"the prompt is {len(ids)} tokens; this model's context is {limit} tokens (prompt and answer)"
        )


def _finish(loaded: Loaded, new_ids: list[int], sampling: Sampling) -> Completion:
    """Decode generated ids: cut at the first stop token or stop string; say why it ended."""
    stop_ids = set(loaded.stop_token_ids)
    pad = loaded.tokenizer.pad_token_id
    cut = next((i for i, t in enumerate(new_ids) if t in stop_ids), None)
    kept = new_ids if cut is None else new_ids[:cut]
    counted = len(new_ids) if cut is None else cut + 1
    if cut is None and pad is not None and pad not in stop_ids:  # right padding of an early finisher
        while kept and kept[-1] == pad:
            kept = kept[:-1]
    text = loaded.tokenizer.decode(kept, skip_special_tokens=True)
    hits = [text.find(s) for s in stops(loaded, sampling) if s in text]
    if hits:
        return Completion(text=text[: min(hits)], tokens=counted, finish_reason="stop")
    reason = "stop" if cut is not None or counted < sampling.max_new_tokens else "length"
    return Completion(text=text, tokens=counted, finish_reason=reason)


def generate(
    loaded: Loaded, prompts: list[list[int]], sampling: Sampling, batch_size: int = 8
) -> list[list[Completion]]:
    """`sampling.num_return_sequences` completions for each prompt (token ids), batched with left
    padding; the seed (when set) makes the whole call reproducible. Greedy, the n completions of a
    prompt are one answer n times (transformers refuses n > 1 without sampling)."""
    import torch
    from transformers import set_seed

    if sampling.seed is not None:
        set_seed(sampling.seed)
    config = sampling.generation_config(loaded)
    n = sampling.num_return_sequences
    runs = n if config.do_sample else 1  # sequences generated per prompt
    config.num_return_sequences = runs
    pad = loaded.tokenizer.pad_token_id
    results: list[list[Completion]] = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        width = max(map(len, batch))
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, prompt in enumerate(batch):
            ids[row, width - len(prompt) :] = torch.tensor(prompt)
            mask[row, width - len(prompt) :] = 1
        with torch.no_grad():
            out = loaded.model.generate(
                input_ids=ids.to(loaded.device),
                attention_mask=mask.to(loaded.device),
                generation_config=config,
                tokenizer=loaded.tokenizer if config.stop_strings else None,
            )
        new = out[:, width:].tolist()
        for row in range(len(batch)):
            done = [_finish(loaded, new[row * runs + k], sampling) for k in range(runs)]
            results.append([replace(done[k % runs]) for k in range(n)])
    return results


class _Cancelled:
    """A stopping criterion that ends generation when its event is set (Ctrl-C, a closed client)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        done = self.event.is_set()
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


class _Pieces:
    """A `generate()` streamer that hands out text as soon as each token decodes. TextIteratorStreamer
    holds text with symbols in it (`|`, `<`, code, markup) until the next space, which may be the end
    of the answer; here a piece waits only while the text ends in an incomplete character (U+FFFD: a
    byte token that starts one). Each step decodes from one piece back, so a token that decodes
    differently after another (a SentencePiece leading space) comes out as in the whole text."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.ids: list[int] = []
        self.prefix = 0  # decoding starts here: the previous piece's tokens, for context
        self.read = 0  # tokens up to here are handed out
        self.prompt = True

    def _new_text(self) -> str:
        before = self.tokenizer.decode(self.ids[self.prefix : self.read], skip_special_tokens=True)
        text = self.tokenizer.decode(self.ids[self.prefix :], skip_special_tokens=True)
        return str(text[len(before) :]) if len(text) > len(before) else ""

    def put(self, value: Any) -> None:
        if self.prompt:  # generate() puts the prompt first
            self.prompt = False
            return
        self.ids.extend(value.reshape(-1).tolist())
        piece = self._new_text()
        if piece and not piece.endswith("\ufffd"):
            self.queue.put(piece)
            self.prefix, self.read = self.read, len(self.ids)

    def end(self) -> None:
        piece = self._new_text()
        if piece:
            self.queue.put(piece)
        self.prefix = self.read = len(self.ids)
        self.queue.put(None)

    def __iter__(self) -> Iterator[str]:
        while (piece := self.queue.get()) is not None:
            yield piece


class Stream:
    """One answer generated in a background thread, read piece by piece as text.

        stream = Stream(loaded, ids, sampling)
        for piece in stream: print(piece, end="")
        stream.completion  # the whole answer, its token count and finish reason

    `cancel()` stops generation at the next token; stop strings end the stream early and are not
    yielded (text that may start a stop string is held back until it cannot)."""

    def __init__(self, loaded: Loaded, ids: list[int], sampling: Sampling):
        from transformers import StoppingCriteriaList

        self.loaded, self.sampling = loaded, sampling
        self.cancelled = threading.Event()
        self.completion: Completion | None = None
        self._streamer = _Pieces(loaded.tokenizer)
        self._new_ids: list[int] = []
        self._error: BaseException | None = None
        config = sampling.generation_config(loaded)
        config.num_return_sequences = 1
        self._kwargs = {
            "generation_config": config,
            "stopping_criteria": StoppingCriteriaList([_Cancelled(self.cancelled)]),
            "streamer": self._streamer,
            "tokenizer": loaded.tokenizer if config.stop_strings else None,
        }
        self._ids = ids
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import torch
        from transformers import set_seed

        try:
            if self.sampling.seed is not None:
                set_seed(self.sampling.seed)
            prompt = torch.tensor([self._ids], device=self.loaded.device)
            with torch.no_grad():
                out = self.loaded.model.generate(
                    input_ids=prompt, attention_mask=torch.ones_like(prompt), **self._kwargs
                )
            self._new_ids = out[0, len(self._ids) :].tolist()
        except BaseException as err:  # reported to the reader, which re-raises it
            self._error = err
            self._streamer.end()

    def cancel(self) -> None:
        self.cancelled.set()

    def __iter__(self) -> Iterator[str]:
        finished = False
        try:
            yield from self._pieces()
            finished = True
        finally:
            if not finished:  # the reader stopped early (a break, an error): so does generation
                self.cancel()

    def _pieces(self) -> Iterator[str]:
        held = ""
        strings = stops(self.loaded, self.sampling)
        stopped = False
        for piece in self._streamer:
            if stopped:
                continue  # drain, so the generating thread can finish
            held += piece
            hits = [held.find(s) for s in strings if s in held]
            if hits:
                out, stopped = held[: min(hits)], True
                self.cancel()
                if out:
                    yield out
                held = ""
                continue
            keep = max((_overlap(held, s) for s in strings), default=0)
            out, held = held[: len(held) - keep], held[len(held) - keep :]
            if out:
                yield out
        if held and not stopped:
            yield held
        self._thread.join()
        if self._error is not None:
            raise self._error
        self.completion = _finish(self.loaded, self._new_ids, self.sampling)
        if self.cancelled.is_set() and not stopped:
            self.completion.finish_reason = "cancelled"


def _overlap(text: str, stop: str) -> int:
    """Length of the longest end of `text` that is a beginning of `stop`."""
    for size in range(min(len(text), len(stop) - 1), 0, -1):
        if stop.startswith(text[-size:]):
            return size
    return 0
