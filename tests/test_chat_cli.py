"""`python -m trainer.cli.chat RUN` driven through a real pseudo-terminal (pexpect), as a person types:
every streamed answer is checked against greedy generation computed here, in the test process, with
trainer.inference on the conversation the chat should have sent (history, system message, dropped
exchanges), so what the terminal shows is the model's real output for the right prompt."""

from __future__ import annotations

import os
import re
import sys
import termios
from pathlib import Path
from typing import Any

import pytest

pexpect = pytest.importorskip("pexpect")

pytestmark = pytest.mark.xdist_group("inference")

REPO = Path(__file__).resolve().parent.parent
PROMPT, MORE = ">>> ", "... "
HINT = "(to quit: /exit or Ctrl-D)"


def spawn(run: Path, *args: str) -> Any:
    """The chat on `run`, started (the caller waits for its first prompt)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TERM": "dumb"}
    child = pexpect.spawn(
        sys.executable,
        ["-m", "trainer.cli.chat", str(run), *args],
        cwd=str(REPO),
        env=env,
        encoding="utf-8",
        timeout=180,
        dimensions=(24, 250),
    )
    # A terminal throws away output not yet read when Ctrl-C comes (unless NOFLSH): the test then
    # could miss answer text the program did write. Set on the master, it applies to the child's side.
    attrs = termios.tcgetattr(child.child_fd)
    attrs[3] |= termios.NOFLSH
    termios.tcsetattr(child.child_fd, termios.TCSANOW, attrs)
    return child


@pytest.fixture(scope="module")
def chats(trained_runs: dict[str, Path]) -> Any:
    """The chat processes the tests talk to, all started at once: each spends seconds importing
    torch and loading its model, which they then do side by side. A test takes its own by name and
    waits for the banner and first prompt (then in `child.before`)."""
    children = {
        "lora": spawn(trained_runs["lora"], "--max-new-tokens", "12"),
        "lora-long": spawn(trained_runs["lora"], "--max-new-tokens", "300"),
        "full": spawn(trained_runs["full"], "--max-new-tokens", "8"),
        "qlora": spawn(trained_runs["qlora"], "--max-new-tokens", "8"),
    }

    def take(name: str) -> Any:
        children[name].expect_exact(PROMPT)
        return children[name]

    yield take
    for child in children.values():
        child.close(force=True)


NOTES = r"((?:\[[^\n]*\]\n)*)"  # the chat's own lines: [dropped ...], [cut at ...], [stopped ...]


def split(shown: str) -> tuple[str, list[str]]:
    """(the answer, the notes around it) from what the terminal showed after the typed line."""
    text = shown.replace("\r\n", "\n")
    match = re.fullmatch(NOTES + r"(.*?)\n" + NOTES, text, re.S)
    assert match, f"not an answer: {shown!r}"
    notes = (match[1] + match[3]).splitlines()
    return match[2], notes


def ask(child: Any, line: str) -> tuple[str, list[str]]:
    """Type `line` (a trailing backslash-newline continues it on the next line) and wait for the
    prompt: (the answer, the notes)."""
    *firsts, last = line.split("\n")
    for first in firsts:
        child.sendline(first + "\\")
        child.expect_exact(MORE)
    child.sendline(last)
    child.expect_exact(last + "\r\n")  # the echo of what was typed
    child.expect_exact(PROMPT)
    return split(child.before)


def command(child: Any, line: str) -> str:
    child.sendline(line)
    child.expect_exact(line + "\r\n")
    child.expect_exact(PROMPT)
    return str(child.before).replace("\r\n", "\n")


def exit_status(child: Any) -> Any:
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus


def turns(*texts: str) -> list[dict[str, str]]:
    """Alternate user / assistant messages."""
    return [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(texts)]


@pytest.fixture(scope="module")
def models(trained_runs: dict[str, Path]) -> Any:
    from trainer.inference.load import load

    cache: dict[str, Any] = {}

    def get(name: str) -> Any:
        if name not in cache:
            cache[name] = load(str(trained_runs[name]))
        return cache[name]

    return get


def greedy(loaded: Any, prompt: Any, max_new_tokens: int, system: str | None = None) -> str:
    from trainer.inference.generation import Sampling, generate, prompt_ids

    ids = prompt_ids(loaded, prompt, system)
    return str(generate(loaded, [ids], Sampling(max_new_tokens=max_new_tokens))[0][0].text)


def fits(loaded: Any, prompt: Any, max_new_tokens: int) -> bool:
    from trainer.inference.generation import prompt_ids

    return len(prompt_ids(loaded, prompt)) + max_new_tokens <= loaded.context_length


def test_chat_keeps_the_conversation_and_runs_its_commands(chats: Any, models: Any) -> None:
    lora, n = models("lora"), 12
    child = chats("lora")
    banner = child.before
    for shown in ("model: lora (LoRA", "chat template", "conversation is kept", "/reset", "/system", "/exit"):
        assert shown in banner
    a1, notes = ask(child, "abc")
    assert a1 == greedy(lora, turns("abc"), n)
    assert notes == [f"[cut at {n} new tokens (--max-new-tokens)]"]
    a2, _ = ask(child, "world")  # answered on the two-turn conversation
    assert a2 == greedy(lora, turns("abc", a1, "world"), n)
    assert a2 != greedy(lora, turns("world"), n)  # which makes a difference here

    assert "[conversation cleared]" in command(child, "/reset")
    assert greedy(lora, turns("abc", a1, "world", a2, "abc"), n) != a1
    assert ask(child, "abc")[0] == a1

    system = "Reverse each word."
    assert "[system message set; conversation cleared]" in command(child, f"/system {system}")
    s1, _ = ask(child, "abc")
    assert s1 == greedy(lora, turns("abc"), n, system=system)
    assert s1 != a1
    assert f"[system message: {system}]" in command(child, "/system")

    assert "unknown command /nope" in command(child, "/nope")
    listed = command(child, "/help")
    assert all(name in listed for name in ("/reset", "/system TEXT", "/help", "/exit"))

    child.send("\x03")  # Ctrl-C at the prompt: a hint, not the end
    child.expect_exact(HINT)
    child.expect_exact(PROMPT)
    s2, _ = ask(child, "xyz")  # still running, the conversation (and system message) intact
    assert s2 == greedy(lora, turns("abc", s1, "xyz"), n, system=system)

    # Long questions until the conversation outgrows the context (512 tokens): the oldest
    # exchanges go, the system message stays, and the chat says so.
    assert "[conversation cleared (the system message stays)]" in command(child, "/reset")
    history: list[str] = []
    for word in ("abcdefghij", "klmnopqrst", "uvwxyzabcd", "efghijklmn", "opqrstuvwx"):
        question = " ".join([word] * 12)
        kept = list(history)
        while kept and not fits(lora, [{"role": "system", "content": system}, *turns(*kept, question)], n):
            kept = kept[2:]
        answer, notes = ask(child, question)
        assert answer == greedy(lora, turns(*kept, question), n, system=system)
        dropped = (len(history) - len(kept)) // 2
        if dropped:
            s = "s" if dropped > 1 else ""
            assert notes[0] == (
                f"[dropped the oldest {dropped} exchange{s} to fit the context (512 tokens, {n} of "
                "them kept for the answer)]"
            )
            break
        assert len(notes) == 1  # only [cut at ...]
        history = [*kept, question, answer]
    else:
        pytest.fail("the conversation never outgrew the context")

    child.sendline("/exit")
    assert exit_status(child) == 0


def test_ctrl_c_stops_an_answer_midway_and_the_chat_goes_on(chats: Any, models: Any) -> None:
    lora, n = models("lora"), 300  # this model never ends an answer: it runs to the limit
    child = chats("lora-long")
    child.sendline("abc")
    child.expect_exact("abc\r\n")
    child.expect(r"\S")  # a first piece of the answer is on the screen ...
    first = child.after
    child.send("\x03")  # ... while it is still being generated: Ctrl-C stops it
    child.expect_exact(PROMPT)
    shown, notes = split(first + child.before.replace("^C", ""))  # the terminal echoes ^C
    assert notes == ["[stopped (Ctrl-C); the partial answer stays in the conversation]"]
    whole = greedy(lora, turns("abc"), n)
    assert whole.startswith(shown)  # streamed: the real answer's beginning, shown before its end
    assert 0 < len(shown) < len(whole)

    conversation = turns("abc", shown, "world")  # the partial answer is the history
    assert fits(lora, conversation, n)
    answer, notes = ask(child, "world")
    assert answer == greedy(lora, conversation, n)
    assert notes == [f"[cut at {n} new tokens (--max-new-tokens)]"]

    child.sendeof()  # Ctrl-D quits
    assert exit_status(child) == 0


@pytest.mark.parametrize("name", ["full", "qlora"])
def test_raw_text_runs_complete_each_prompt_alone(name: str, chats: Any, models: Any) -> None:
    loaded, n = models(name), 8
    child = chats(name)
    assert "raw text" in child.before and "without history" in child.before
    prompt = "Reverse the word: abc\nAnswer: "  # as the run trained, over two typed lines
    answer, _ = ask(child, prompt)
    assert answer == greedy(loaded, prompt, n)
    assert "no system message" in command(child, "/system Be brief.")
    child.sendline("/exit")
    assert exit_status(child) == 0
