"""`python -m trainer.cli.chat RUN`: chat with a trained model in the terminal, the answer streamed
token by token as it is generated. The model is loaded as it was trained (see trainer.inference.load).

A chat model (the run's tokenizer has a chat template and the run trained on chat data) keeps the
conversation: each question and answer are appended as user / assistant messages and the whole
conversation is rendered with the chat template every turn. When it no longer fits the model's
context (prompt + --max-new-tokens above it) the oldest exchanges are dropped (the system message
stays), and the chat says so. A raw-text model (no template, or --raw) completes each prompt on its
own, with no history: it was trained on single prompt -> completion pairs, and earlier turns pasted
in front would be text it never saw. End a line with \\ to go on with the prompt on the next line
(raw prompts often span lines, such as "...\\nAnswer: "); a raw prompt is sent as typed, spaces kept.

Commands: /reset, /system TEXT, /help, /exit (or Ctrl-D). Ctrl-C while an answer is being generated
stops it: what was shown stays in the conversation as the answer (nothing shown: the question is
dropped too); Ctrl-C at the prompt only prints how to quit. A line starting with // sends one /.
A raw-text model has no system message (/system and --system say so). The conversation and its
fitting to the context live in trainer.inference.conversation; this module is the terminal loop.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from typing import Any

from trainer.cli.common import add_model_args, add_sampling_args, load_from, run, sampling_from

PROMPT, MORE = ">>> ", "... "
HINT = "(to quit: /exit or Ctrl-D)"
COMMANDS = """\
  /reset          forget the conversation (the system message stays)
  /system TEXT    set the system message and start over (/system alone shows it, /system - removes it)
  /help           this list
  /exit           quit (also /quit or Ctrl-D); Ctrl-C stops an answer being generated"""


EPILOG = """\
A chat model keeps the conversation: it is rendered with the run's chat template every turn, and the
oldest exchanges are dropped when it outgrows the model's context (the system message stays). A
raw-text model (no chat template, or --raw) completes each prompt on its own, without history. End a
line with \\ to continue the prompt on the next line. Ctrl-C stops an answer being generated; what
was shown stays in the conversation.

commands:
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m trainer.cli.chat",
        description="Chat with a trained model in the terminal (answers streamed as they are generated).",
        epilog=EPILOG + COMMANDS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(p)
    p.add_argument("--system", help="the system message (chat models; /system changes it)")
    add_sampling_args(p)
    return p


class Chat:
    """The terminal loop: read a line, run a command or stream an answer into the conversation."""

    def __init__(self, loaded: Any, sampling: Any, system: str | None):
        from trainer.inference.conversation import Conversation

        self.loaded, self.sampling = loaded, sampling
        self.conversation = Conversation(loaded, system)

    def say(self, text: str = "", end: str = "\n") -> None:
        sys.stdout.write(text + end)
        sys.stdout.flush()

    def note(self, text: str) -> None:
        self.say(f"[{text}]")

    def ask(self, question: str) -> None:
        """Stream the answer; Ctrl-C (SIGINT) cancels it instead of raising KeyboardInterrupt."""
        from trainer.inference.generation import Stream

        limit, budget = self.loaded.context_length, self.sampling.max_new_tokens
        fitted = self.conversation.fit(question, self.sampling)
        if fitted.dropped:
            s = "s" if fitted.dropped > 1 else ""
            self.note(
                f"dropped the oldest {fitted.dropped} exchange{s} to fit the context "
                f"({limit} tokens, {budget} of them kept for the answer)"
            )
        if fitted.capped and budget < limit:  # else the banner said it once
            self.note(f"this answer is limited to {fitted.sampling.max_new_tokens} tokens to fit the context")
        stream: Stream | None = None
        interrupted = False

        def on_interrupt(signum: int, frame: Any) -> None:
            nonlocal interrupted
            interrupted = True
            if stream is not None:
                stream.cancel()

        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, on_interrupt) if main_thread else None
        shown: list[str] = []
        try:
            stream = Stream(self.loaded, fitted.ids, fitted.sampling)
            if interrupted:
                stream.cancel()
            for piece in stream:
                shown.append(piece)
                self.say(piece, end="")
        finally:
            if main_thread:
                signal.signal(signal.SIGINT, previous)
        self.say()
        answer, reason = "".join(shown), stream.completion.finish_reason if stream.completion else "stop"
        if reason == "cancelled":
            kept = "the partial answer stays in the conversation" if answer else "the question is dropped"
            self.note(f"stopped (Ctrl-C); {kept}" if self.loaded.chat else "stopped (Ctrl-C)")
        elif reason == "length":
            self.note(f"cut at {fitted.sampling.max_new_tokens} new tokens (--max-new-tokens)")
        if answer or reason != "cancelled":
            self.conversation.add(question, answer)  # what was shown is what the model said

    def command(self, line: str) -> bool:
        """Run a /command; False to quit."""
        name, _, arg = line.strip().partition(" ")
        name, arg = name.lower(), arg.strip()
        conversation = self.conversation
        if name in ("/exit", "/quit"):
            return False
        if name == "/help":
            self.say("commands:\n" + COMMANDS)
        elif name == "/reset":
            conversation.reset()
            self.note("conversation cleared" + (" (the system message stays)" if conversation.system else ""))
        elif name == "/system" and not self.loaded.chat:
            self.note("a raw-text model has no system message (each prompt is completed as typed)")
        elif name == "/system" and not arg:
            system = conversation.system
            self.note(f"system message: {system}" if system else "no system message")
        elif name == "/system":
            conversation.reset(None if arg == "-" else arg, keep_system=False)
            done = "system message removed" if arg == "-" else "system message set"
            self.note(f"{done}; conversation cleared")
        else:
            self.note(f"unknown command {name} (/help lists the commands)")
        return True

    def read(self) -> str:
        """One prompt: lines ending in a backslash go on with the next line."""
        lines: list[str] = []
        prompt = PROMPT
        while True:
            line = input(prompt)
            if not line.endswith("\\"):
                return "\n".join([*lines, line])
            lines.append(line[:-1])
            prompt = MORE

    def loop(self) -> int:
        from trainer.inference.generation import PromptError

        while True:
            try:
                text = self.read()
            except EOFError:  # Ctrl-D
                self.say()
                return 0
            except KeyboardInterrupt:
                self.say("\n" + HINT)
                continue
            if text.startswith("/") and not text.startswith("//"):
                if not self.command(text):
                    return 0
                continue
            question = text[1:] if text.startswith("//") else text
            if self.loaded.chat:
                question = question.strip()
            if not question.strip():
                continue
            try:
                self.ask(question)
            except PromptError as err:
                self.note(f"error: {err}")
            except KeyboardInterrupt:  # before the answer started
                self.say()
                self.note("interrupted")


def banner(chat: Chat, args: argparse.Namespace) -> None:
    loaded, sampling = chat.loaded, chat.sampling
    limit = loaded.context_length
    if loaded.chat:
        chat.say(
            "chat: the conversation is kept and rendered with the chat template each turn; when it "
            f"outgrows the context ({limit or 'unknown'} tokens) the oldest exchanges are dropped"
        )
        system = chat.conversation.system
        chat.say(f"system message: {system}" if system else "system message: none (/system TEXT)")
    else:
        chat.say(
            "raw text: no chat template, so each prompt is completed on its own, without history; "
            "end a line with \\ to continue the prompt on the next line"
        )
        if args.system:
            chat.note("--system is ignored: a raw-text prompt has no system message")
    how = "greedy" if sampling.temperature == 0 else f"sampled at temperature {sampling.temperature}"
    chat.say(f"answers: up to {sampling.max_new_tokens} new tokens, {how}")
    if limit is not None and sampling.max_new_tokens >= limit:
        chat.note(
            f"--max-new-tokens {sampling.max_new_tokens} is not below the context ({limit} tokens): "
            "each answer gets the room the prompt leaves" + (", and no history fits" if loaded.chat else "")
        )
    chat.say("commands: /reset  /system TEXT  /help  /exit (or Ctrl-D); Ctrl-C stops an answer")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    sampling = sampling_from(args)
    with contextlib.suppress(ImportError):  # no readline on Windows: input() without line editing
        import readline  # noqa: F401  (importing it gives input() line editing and history)
    print(f"loading {args.run} ...", flush=True)
    loaded = load_from(args, log=lambda line: print(line, flush=True))
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # library warnings (a long conversation being trimmed) garble the chat
    chat = Chat(loaded, sampling, args.system)
    banner(chat, args)
    return chat.loop()


if __name__ == "__main__":
    run(main)
