"""`python -m trainer.cli.serve`: the OpenAI-compatible server, called with the official `openai`
client (and raw HTTP where the client hides the wire). Greedy answers equal
`trainer.inference.generation.generate` for the same prompt (chat on the LoRA ChatML run, raw text
on the full and QLoRA runs); a stream joins to the non-streamed answer; usage counts are the
tokenizer's; concurrent requests queue and each gets its own sequential answer; a full queue
answers 429 at once; a client that leaves mid-stream cancels its generation; every client mistake
is a 4xx OpenAI error JSON and the server goes on; the API key is enforced.

Servers run in this process (uvicorn in a thread, one per model, shared by the module)."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from tests.conftest import REPO, run_command  # noqa: E402

pytestmark = pytest.mark.xdist_group("inference")

PROMPTS = [
    "Reverse the word: plane\nAnswer: ",
    "Reverse the word: a\nAnswer: ",
    "Reverse the word: crocodile\nAnswer: ",
]
KEY = "s3cret-key"


class Running:
    """create_app(loaded, **options) served by uvicorn on 127.0.0.1 (a free port) in a thread."""

    def __init__(self, loaded: Any, **options: Any):
        from trainer.cli.serve import bind
        from trainer.inference.server import create_app

        self.loaded = loaded
        self.app = create_app(loaded, **options)
        self.state = self.app.state.server
        sock = bind("127.0.0.1", 0)
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        config = uvicorn.Config(self.app, log_level="warning", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)

    def client(self, api_key: str = "none") -> Any:
        return openai.OpenAI(base_url=self.url, api_key=api_key, max_retries=0, timeout=120)

    def post(self, path: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """Raw POST (bytes sent as they are; anything else as JSON): (status, parsed JSON body)."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            conn.request(
                "POST",
                f"/v1/{path}",
                body=data,
                headers={"Content-Type": "application/json", **(headers or {})},
            )
            response = conn.getresponse()
            text = response.read().decode()
        finally:
            conn.close()
        assert "Traceback" not in text
        return response.status, json.loads(text) if text.startswith("{") else text

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()


@contextlib.contextmanager
def serving(loaded: Any, **options: Any) -> Iterator[Running]:
    running = Running(loaded, **options)
    try:
        yield running
    finally:
        running.stop()


def load(path: Path) -> Any:
    from trainer.inference.load import load as load_run

    return load_run(str(path))


@pytest.fixture(scope="module")
def full(trained_runs: dict[str, Path]) -> Iterator[Running]:
    with serving(load(trained_runs["full"])) as running:
        yield running


@pytest.fixture(scope="module")
def lora(trained_runs: dict[str, Path]) -> Iterator[Running]:
    with serving(load(trained_runs["lora"])) as running:
        yield running


@pytest.fixture(scope="module")
def base(tiny_model: Path) -> Iterator[Running]:
    """The untrained tiny model (its greedy answers run to max_tokens: long, slow requests), with a
    queue of one and an API key."""
    with serving(load(tiny_model), max_queue=1, api_key=KEY) as running:
        yield running


def greedy(loaded: Any, ids: list[int], max_new_tokens: int, stop: list[str] | None = None) -> Any:
    from trainer.inference.generation import Sampling, generate

    return generate(loaded, [ids], Sampling(max_new_tokens=max_new_tokens, stop=stop or []))[0][0]


def raw_ids(loaded: Any, prompt: str) -> list[int]:
    return list(loaded.tokenizer(prompt, add_special_tokens=True).input_ids)


def chat_ids(loaded: Any, messages: list[dict[str, Any]]) -> list[int]:
    from trainer.inference.generation import prompt_ids

    return prompt_ids(loaded, messages)


def test_chat_completion_on_the_lora_run(lora: Running) -> None:
    client = lora.client()
    assert [m.id for m in client.models.list()] == ["lora"]
    assert client.models.retrieve("lora").id == "lora"
    messages = [{"role": "system", "content": "Reverse each word."}, {"role": "user", "content": "plane"}]
    answer = client.chat.completions.create(model="lora", messages=messages, max_tokens=12, temperature=0)
    expected = greedy(lora.loaded, chat_ids(lora.loaded, messages), 12)
    (choice,) = answer.choices
    assert choice.message.role == "assistant" and choice.message.content == expected.text
    assert choice.finish_reason == expected.finish_reason
    assert answer.object == "chat.completion" and answer.model == "lora" and answer.id.startswith("chatcmpl-")
    # usage: the tokenizer's own count of the rendered ChatML prompt, and the generated tokens
    tokenizer = lora.loaded.tokenizer
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered.startswith("<|im_start|>system\nReverse each word.<|im_end|>")
    assert answer.usage is not None
    assert answer.usage.prompt_tokens == len(tokenizer(rendered, add_special_tokens=False).input_ids)
    assert answer.usage.completion_tokens == expected.tokens
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + expected.tokens


def test_a_stream_joins_to_the_greedy_answer(lora: Running) -> None:
    client = lora.client()
    messages = [{"role": "user", "content": "crocodile"}]
    whole = client.chat.completions.create(model="lora", messages=messages, max_tokens=16, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model="lora",
            messages=messages,
            max_tokens=16,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks[1:] if c.choices and c.choices[0].delta.content]
    assert pieces and "".join(pieces) == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage  # include_usage: the last chunk
    assert all(c.usage is None for c in chunks[:-1])

    # without include_usage no usage anywhere; on the wire: `data: {...}` events, then `data: [DONE]`
    status, text = lora.post(
        "completions",
        {"model": "lora", "prompt": PROMPTS[0], "max_tokens": 6, "temperature": 0, "stream": True},
    )
    events = text.split("\n\n")
    assert status == 200 and events[-2:] == ["data: [DONE]", ""]
    bodies = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(b["object"] == "text_completion" and "usage" not in b for b in bodies)
    streamed = "".join(b["choices"][0]["text"] for b in bodies)
    assert bodies[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert streamed == greedy(lora.loaded, raw_ids(lora.loaded, PROMPTS[0]), 6).text


def test_completions_equal_generate_on_the_full_run(full: Running) -> None:
    client = full.client()
    assert [m.id for m in client.models.list()] == ["full"]
    for prompt in PROMPTS:
        ids = raw_ids(full.loaded, prompt)
        assert ids[0] == full.loaded.tokenizer.bos_token_id  # BOS, as training added it
        expected = greedy(full.loaded, ids, 12)
        answer = client.completions.create(model="full", prompt=prompt, max_tokens=12, temperature=0)
        (choice,) = answer.choices
        assert (choice.text, choice.finish_reason) == (expected.text, expected.finish_reason)
        assert answer.usage is not None
        assert answer.usage.prompt_tokens == len(full.loaded.tokenizer(prompt).input_ids)
        assert answer.usage.completion_tokens == expected.tokens
    assert any(greedy(full.loaded, raw_ids(full.loaded, p), 12).text for p in PROMPTS)  # it answers something
    listed = client.completions.create(model="full", prompt=[PROMPTS[0]], max_tokens=12, temperature=0)
    assert listed.choices[0].text == greedy(full.loaded, raw_ids(full.loaded, PROMPTS[0]), 12).text

    # cut by max_tokens: completion_tokens is max_tokens, the tokenizer's count of the text
    answer = client.completions.create(model="full", prompt="Reverse the word: ", max_tokens=3, temperature=0)
    tokens = answer.usage.completion_tokens if answer.usage else None
    if answer.choices[0].finish_reason == "length":
        assert tokens == 3
        assert len(full.loaded.tokenizer(answer.choices[0].text, add_special_tokens=False).input_ids) == 3
    else:  # ended by EOS: the text's tokens and the EOS
        assert (
            tokens
            == len(full.loaded.tokenizer(answer.choices[0].text, add_special_tokens=False).input_ids) + 1
        )


def test_qlora_run_serves_from_its_4bit_base(trained_runs: dict[str, Path]) -> None:
    pytest.importorskip("bitsandbytes")
    loaded = load(trained_runs["qlora"])
    with serving(loaded) as running:
        answer = running.client().completions.create(
            model="qlora", prompt=PROMPTS[0], max_tokens=8, temperature=0
        )
    assert answer.choices[0].text == greedy(loaded, raw_ids(loaded, PROMPTS[0]), 8).text


def test_n_seed_and_stop(lora: Running, full: Running) -> None:
    client = full.client()
    sampled = {"model": "full", "prompt": PROMPTS[2], "max_tokens": 8, "temperature": 1.0, "n": 2}
    first = client.completions.create(**sampled, seed=11)
    assert [c.index for c in first.choices] == [0, 1]
    again = client.completions.create(**sampled, seed=11)
    assert [c.text for c in again.choices] == [c.text for c in first.choices]  # the seed reproduces them
    assert first.usage is not None and first.usage.completion_tokens <= 16
    greedy_two = client.completions.create(**{**sampled, "temperature": 0, "seed": -1})
    assert [c.text for c in greedy_two.choices] == [
        greedy(full.loaded, raw_ids(full.loaded, PROMPTS[2]), 8).text
    ] * 2
    one = {**sampled, "n": 1, "seed": 3}
    alone = client.completions.create(**one).choices[0].text
    assert "".join(c.choices[0].text for c in client.completions.create(**one, stream=True)) == alone
    streamed = list(client.completions.create(**sampled, seed=11, stream=True))
    finished = [c.choices[0] for c in streamed if c.choices[0].finish_reason]
    assert sorted(c.index for c in finished) == [0, 1]  # n=2 streams both choices

    chat = lora.client()
    messages = [{"role": "user", "content": "plane"}]
    whole = chat.chat.completions.create(model="lora", messages=messages, max_tokens=12, temperature=0)
    text = whole.choices[0].message.content or ""
    assert len(text) >= 3, text
    for stop in (text[2], [text[2], "never-there"]):
        cut = chat.chat.completions.create(
            model="lora", messages=messages, max_tokens=12, temperature=0, stop=stop
        )
        assert cut.choices[0].message.content == text.split(text[2])[0]
        assert cut.choices[0].finish_reason == "stop"
    pieces = chat.chat.completions.create(
        model="lora", messages=messages, max_tokens=12, temperature=0, stop=text[2], stream=True
    )
    joined = "".join(c.choices[0].delta.content or "" for c in pieces if c.choices)
    assert joined == text.split(text[2])[0]


def test_concurrent_requests_queue_and_each_gets_its_own_answer(full: Running) -> None:
    """Six requests at once (half streamed), each sampled with its own seed: each answer equals the
    one generated alone, so none ran into another (they share the global RNG) and none was lost."""
    from trainer.inference.generation import Sampling, generate

    words = ["a", "plane", "crocodile", "xy", "elephants", "go"]
    requests = [
        {
            "model": "full",
            "prompt": f"Reverse the word: {w}\nAnswer: ",
            "max_tokens": 6 + i,
            "temperature": 1.0,
            "seed": i,
        }
        for i, w in enumerate(words)
    ]
    expected = [
        generate(
            full.loaded,
            [raw_ids(full.loaded, r["prompt"])],
            Sampling(max_new_tokens=r["max_tokens"], temperature=1.0, seed=r["seed"]),
        )[0][0].text
        for r in requests
    ]
    assert len(set(expected)) > 1
    rejected = full.state.worker.stats["rejected"]
    client = full.client()
    start = threading.Barrier(len(requests))
    answers: dict[int, str] = {}

    def ask(i: int) -> None:
        start.wait()
        if i % 2:
            chunks = client.completions.create(**requests[i], stream=True)
            answers[i] = "".join(c.choices[0].text for c in chunks)
        else:
            answers[i] = client.completions.create(**requests[i]).choices[0].text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert [answers.get(i) for i in range(len(requests))] == expected
    assert full.state.worker.stats["rejected"] == rejected and full.state.worker.pending == 0


def wait_for(condition: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_full_queue_answers_429_at_once_and_loses_nothing(base: Running) -> None:
    """--max-queue 1: one generating, one waiting; the others are refused at once."""
    client = base.client(KEY)
    worker = base.state.worker
    results: dict[str, Any] = {}
    wait_for(lambda: worker.pending == 0)

    def long() -> None:
        chunks = client.completions.create(
            model="tiny-llama", prompt="a", max_tokens=480, temperature=0, stream=True
        )
        results["long"] = [c.choices[0] for c in chunks]

    def short() -> None:
        results["short"] = client.completions.create(
            model="tiny-llama", prompt="b", max_tokens=4, temperature=0
        )

    first = threading.Thread(target=long)
    first.start()
    wait_for(lambda: worker.pending == 1)
    second = threading.Thread(target=short)
    second.start()
    wait_for(lambda: worker.pending == 2)
    for _ in range(2):
        began = time.monotonic()
        with pytest.raises(openai.RateLimitError) as refused:
            client.completions.create(model="tiny-llama", prompt="c", max_tokens=4)
        assert time.monotonic() - began < 2
        assert refused.value.status_code == 429 and refused.value.code == "queue_full"
        assert refused.value.response.headers["retry-after"] == "1"
    assert worker.pending == 2  # both admitted requests still there
    first.join(timeout=120)
    second.join(timeout=120)
    assert "".join(c.text for c in results["long"]) and results["long"][-1].finish_reason == "length"
    assert results["short"].choices[0].finish_reason == "length"
    assert results["short"].usage.completion_tokens == 4
    assert worker.stats["rejected"] >= 2


def test_a_client_that_leaves_mid_stream_cancels_its_generation(base: Running) -> None:
    worker = base.state.worker
    wait_for(lambda: worker.pending == 0)
    cancelled = worker.stats["cancelled"]
    body = json.dumps(
        {"model": "tiny-llama", "prompt": "a", "max_tokens": 480, "temperature": 0, "stream": True}
    )
    conn = http.client.HTTPConnection("127.0.0.1", base.port, timeout=60)
    conn.request("POST", "/v1/completions", body=body, headers={"Authorization": f"Bearer {KEY}"})
    response = conn.getresponse()
    assert response.status == 200 and response.headers["content-type"].startswith("text/event-stream")
    line = response.readline()
    assert line.startswith(b"data: {") and json.loads(line[6:])["choices"][0]["text"]  # a first piece
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    wait_for(lambda: worker.stats["cancelled"] > cancelled)
    assert 0 < worker.cancelled_tokens[-1] < 480  # stopped early, not run to max_tokens
    wait_for(lambda: worker.pending == 0)
    after = base.client(KEY).completions.create(model="tiny-llama", prompt="a", max_tokens=3, temperature=0)
    assert after.choices[0].finish_reason == "length"  # and the server goes on


def test_the_api_key_is_required_when_set(base: Running) -> None:
    for key in ("none", "wrong"):
        with pytest.raises(openai.AuthenticationError) as denied:
            base.client(key).models.list()
        assert denied.value.status_code == 401 and denied.value.code == "invalid_api_key"
    status, body = base.post("completions", {"model": "tiny-llama", "prompt": "a", "max_tokens": 2})
    assert (
        status == 401
        and "API key" in body["error"]["message"]
        and body["error"]["type"] == "invalid_request_error"
    )
    assert [m.id for m in base.client(KEY).models.list()] == ["tiny-llama"]


def test_client_mistakes_are_4xx_openai_errors_and_the_server_goes_on(full: Running, lora: Running) -> None:
    good = {"model": "full", "prompt": "Reverse the word: go\nAnswer: ", "max_tokens": 2}
    chat = {"model": "lora", "messages": [{"role": "user", "content": "go"}], "max_tokens": 2}
    long_prompt = "x" * 600  # the context is 512 tokens
    cases: list[tuple[Running, str, Any, int, str | None, str]] = [
        (full, "completions", {**good, "model": "gpt-4"}, 404, "model_not_found", "does not exist"),
        (
            full,
            "completions",
            b'{"model": "full", "prompt": ',
            400,
            "invalid_json",
            "could not parse the JSON",
        ),
        (full, "completions", [good], 400, "invalid_json", "must be a JSON object"),
        (full, "completions", {"prompt": "x"}, 400, "missing_required_parameter", "model parameter"),
        (full, "completions", {"model": "full"}, 400, "missing_required_parameter", "'prompt'"),
        (full, "completions", {**good, "prompt": 7}, 400, "invalid_type", "'prompt'"),
        (full, "completions", {**good, "prompt": ["a", "b"]}, 400, "invalid_value", "one prompt per request"),
        (full, "completions", {**good, "max_tokens": 0}, 400, "invalid_value", "Expected a value >= 1"),
        (full, "completions", {**good, "max_tokens": -5}, 400, "invalid_value", "'max_tokens'"),
        (full, "completions", {**good, "max_tokens": "5"}, 400, "invalid_type", "expected an integer"),
        (full, "completions", {**good, "max_tokens": 2.5}, 400, "invalid_type", "'max_tokens'"),
        (full, "completions", {**good, "n": 0}, 400, "invalid_value", "'n'"),
        (full, "completions", {**good, "temperature": -0.5}, 400, "invalid_value", "'temperature'"),
        (full, "completions", {**good, "temperature": "hot"}, 400, "invalid_type", "expected a number"),
        (full, "completions", {**good, "top_p": 0}, 400, "invalid_value", "'top_p'"),
        (full, "completions", {**good, "stop": 5}, 400, "invalid_type", "'stop'"),
        (full, "completions", {**good, "stop": [""]}, 400, "invalid_value", "cannot be empty"),
        (full, "completions", {**good, "stream": "yes"}, 400, "invalid_type", "'stream'"),
        (
            full,
            "completions",
            {**good, "stream_options": {"include_usage": True}},
            400,
            "invalid_value",
            "stream",
        ),
        (full, "completions", {**good, "logprobs": 2}, 400, "unsupported_parameter", "'logprobs'"),
        (
            full,
            "completions",
            {**good, "prompt": long_prompt},
            400,
            "context_length_exceeded",
            "context length",
        ),
        (full, "completions", {**good, "max_tokens": 510}, 400, "context_length_exceeded", "you requested"),
        (
            full,
            "chat/completions",
            {**chat, "model": "full"},
            400,
            "chat_template_missing",
            "no chat template",
        ),
        (lora, "chat/completions", {**chat, "messages": "hi"}, 400, "invalid_type", "'messages'"),
        (lora, "chat/completions", {**chat, "messages": []}, 400, "invalid_value", "'messages'"),
        (lora, "chat/completions", {**chat, "messages": [{"content": "x"}]}, 400, "invalid_type", "role"),
        (
            lora,
            "chat/completions",
            {**chat, "messages": [{"role": "wizard", "content": "x"}]},
            400,
            None,
            "wizard",
        ),
        (
            lora,
            "chat/completions",
            {**chat, "messages": [{"role": "user", "content": 3}]},
            400,
            "invalid_type",
            "",
        ),
        (lora, "chat/completions", {**chat, "max_completion_tokens": 0}, 400, "invalid_value", ">= 1"),
        (lora, "models-nope", {}, 404, "unknown_url", "Unknown request URL"),
    ]
    for running, path, body, status, code, message in cases:
        got, answer = running.post(path, body)
        assert got == status, (path, body, answer)
        error = answer["error"]
        assert set(error) == {"message", "type", "param", "code"}, answer
        assert error["type"] == "invalid_request_error" and message in error["message"], (body, error)
        assert code is None or error["code"] == code, (body, error)
    assert full.post("completions", good)[0] == 200  # still serving
    assert lora.post("chat/completions", chat)[0] == 200

    # the openai client raises its typed errors with the status, code and message
    with pytest.raises(openai.BadRequestError) as bad:
        full.client().completions.create(model="full", prompt="x", max_tokens=0)
    assert bad.value.status_code == 400 and bad.value.param == "max_tokens" and ">= 1" in bad.value.message
    with pytest.raises(openai.NotFoundError) as missing:
        full.client().completions.create(model="nope", prompt="x")
    assert missing.value.code == "model_not_found" and "'full'" in missing.value.message
    with pytest.raises(openai.BadRequestError) as too_long:
        lora.client().chat.completions.create(
            model="lora", messages=[{"role": "user", "content": long_prompt}]
        )
    assert too_long.value.code == "context_length_exceeded"
    assert full.client().completions.create(model="full", prompt="x", max_tokens=1).choices


def test_max_tokens_default_is_the_context_left(full: Running) -> None:
    """No max_tokens: up to the context left, at most the default (256); OpenAI's 400 beyond it."""
    assert full.state.default_max_tokens == 256
    assert full.state._max_new_tokens([1] * 10, None, "prompt") == 256
    assert full.state._max_new_tokens([1] * 500, None, "prompt") == 12
    assert full.state._max_new_tokens([1] * 500, 12, "prompt") == 12
    from trainer.inference.server import ApiError

    with pytest.raises(ApiError, match="you requested 513 tokens"):
        full.state._max_new_tokens([1] * 500, 13, "prompt")


def test_the_command(trained_runs: dict[str, Path], tmp_path: Path) -> None:
    """The real command in a fresh process: on a non-loopback address it warns, prints the URL, the
    model and how to call it, takes its key from $TRAINER_API_KEY, and stops on Ctrl-C."""
    env = {**os.environ, "TRAINER_API_KEY": KEY, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    errors = tmp_path / "stderr.txt"
    with open(errors, "w") as stderr:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "trainer.cli.serve",
                str(trained_runs["full"]),
                "--host",
                "0.0.0.0",
                "--port",
                "0",
            ],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
            cwd=REPO,
        )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout or []], daemon=True).start()
    try:
        out: list[str] = []
        while not out or not out[-1].startswith("Ctrl-C"):
            try:
                out.append(lines.get(timeout=90).rstrip("\n"))
            except queue.Empty:
                pytest.fail(f"no banner: {out} {errors.read_text()}")
        url = out[0].split(" at ")[1].split()[0]
        assert out[0].startswith("serving 'full' at http://127.0.0.1:") and url.endswith("/v1")
        assert any(line.lstrip().startswith("curl ") for line in out)
        assert any("OpenAI(base_url=" in line for line in out)
        assert "warning: listening on 0.0.0.0: the model is reachable from the network" in errors.read_text()
        wait_for(lambda: _answers(url), timeout=30)
        client = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0)
        assert client.completions.create(model="full", prompt="a", max_tokens=2).choices
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url, api_key="other", max_retries=0).models.list()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) in (0, 130)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in errors.read_text()


def _answers(url: str) -> bool:
    parsed = urlparse(url)
    try:
        conn = http.client.HTTPConnection(parsed.hostname or "", parsed.port, timeout=5)
        conn.request("GET", "/health")
        return conn.getresponse().status == 200
    except OSError:
        return False


def test_command_line_mistakes_exit_2(trained_runs: dict[str, Path], tmp_path: Path) -> None:
    from trainer.cli.serve import base_url, is_loopback

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        cases = {
            (trained_runs["full"], "--max-queue", "-1"): "--max-queue must be at least 0",
            (trained_runs["full"], "--port", "70000"): "--port must be in 0..65535",
            (trained_runs["full"], "--port", str(taken.getsockname()[1])): "cannot listen on 127.0.0.1:",
            (tmp_path / "nope", "--port", "0"): "no such directory",
        }
        for args, message in cases.items():
            done = run_command("serve", *args)
            assert done.returncode == 2 and message in done.stderr, (args, done.stderr)
            assert "Traceback" not in done.stderr
    finally:
        taken.close()
    assert run_command("serve", trained_runs["full"], env={"TRAINER_API_KEY": " "}).returncode == 2
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2") and not is_loopback("example.com")
    assert (
        base_url("0.0.0.0", 8000) == "http://127.0.0.1:8000/v1" and base_url("::", 1) == "http://[::1]:1/v1"
    )
