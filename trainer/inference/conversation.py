"""A conversation with a loaded model, kept as (question, answer) exchanges and rendered the way the
model was trained, fitted to its context before each answer. No terminal here: the chat command is the
front end.

A chat model (prompts go through the chat template) keeps the history: every turn the system message
and all exchanges are rendered again. A raw-text model keeps none: each prompt is completed on its
own, since earlier turns pasted in front would be text it was never trained on.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from trainer.inference.generation import Messages, Sampling, check_length, prompt_ids
from trainer.inference.load import Loaded


@dataclass
class Fitted:
    """The next prompt, ready to generate from."""

    ids: list[int]
    sampling: Sampling  # the caller's, with max_new_tokens cut to the room left when `capped`
    dropped: int  # oldest exchanges dropped to make room
    capped: bool


class Conversation:
    def __init__(self, loaded: Loaded, system: str | None = None):
        self.loaded = loaded
        self.system = system if loaded.chat else None
        self.exchanges: list[tuple[str, str]] = []  # (question, answer), oldest first

    @property
    def keeps_history(self) -> bool:
        return bool(self.loaded.chat)

    def prompt(self, question: str, exchanges: list[tuple[str, str]] | None = None) -> str | Messages:
        """The question as the model takes it: chat messages after the exchanges, or the raw text."""
        if not self.keeps_history:
            return question
        messages: Messages = []
        for asked, answered in self.exchanges if exchanges is None else exchanges:
            messages += [{"role": "user", "content": asked}, {"role": "assistant", "content": answered}]
        return [*messages, {"role": "user", "content": question}]

    def fit(self, question: str, sampling: Sampling) -> Fitted:
        """The prompt for `question`, the oldest exchanges dropped (for good) until prompt +
        max_new_tokens fit the context. When the question alone leaves less room than that, the answer
        gets the room left; when it leaves none, PromptError and nothing is dropped."""
        limit, budget = self.loaded.context_length, sampling.max_new_tokens
        start = 0
        while True:
            ids = prompt_ids(self.loaded, self.prompt(question, self.exchanges[start:]), self.system)
            if limit is None or len(ids) + budget <= limit or start == len(self.exchanges):
                break
            start += 1
        check_length(self.loaded, ids, budget)
        del self.exchanges[:start]
        if limit is not None and len(ids) + budget > limit:
            return Fitted(ids, replace(sampling, max_new_tokens=limit - len(ids)), start, True)
        return Fitted(ids, sampling, start, False)

    def add(self, question: str, answer: str) -> None:
        if self.keeps_history:
            self.exchanges.append((question, answer))

    def reset(self, system: str | None = None, *, keep_system: bool = True) -> None:
        """Forget the exchanges; the system message stays unless a new one (or None) is given."""
        self.exchanges.clear()
        if not keep_system and self.keeps_history:
            self.system = system
