"""`python -m trainer.cli.serve RUN [--host 127.0.0.1] [--port 8000]`: serve a trained model over an
OpenAI-compatible HTTP API (`/v1/models`, `/v1/chat/completions`, `/v1/completions`), loaded as it was
trained (see trainer.inference.load; the server is trainer.inference.server).

Listens on 127.0.0.1 unless `--host` says otherwise (another address warns: the model is then
reachable from the network). `--api-key KEY` (or the environment variable TRAINER_API_KEY) makes
every /v1 request need `Authorization: Bearer KEY`. One request generates at a time; up to
`--max-queue` wait, further ones are answered 429 at once. Needs the `serve` extra (fastapi, uvicorn).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shlex
import socket
import sys
from typing import Any

from trainer.cli.common import USER_ERROR, add_model_args, load_from, run

API_KEY_ENV = "TRAINER_API_KEY"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m trainer.cli.serve",
        description="Serve a trained model (full, adapter or merged run, checkpoint, or model folder) "
        "over an OpenAI-compatible HTTP API.",
        epilog="Requests take OpenAI's fields: model, messages (chat) or prompt (raw text), max_tokens, "
        "temperature (default 1, as OpenAI's; 0 is greedy), top_p, n, stop, seed, stream and "
        "stream_options.include_usage; top_k and repetition_penalty as extensions. A prompt plus max_tokens "
        "beyond the model's context is a 400 context_length_exceeded; without max_tokens an answer may use "
        "the context left, up to --default-max-tokens. Mistakes are answered 4xx with OpenAI's error JSON, "
        "a full queue 429 with Retry-After; a streaming client that disconnects stops its generation.",
    )
    add_model_args(p)
    g = p.add_argument_group("server")
    g.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    g.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    g.add_argument(
        "--model-name", help="the model id clients send and /v1/models lists (default: the run's name)"
    )
    g.add_argument(
        "--api-key",
        help=f"require 'Authorization: Bearer KEY' on every /v1 request (default: ${API_KEY_ENV}, which "
        "keeps the key out of the process list)",
    )
    g.add_argument(
        "--max-queue",
        type=int,
        default=16,
        help="requests that may wait while one generates; beyond it they get 429 (default 16)",
    )
    g.add_argument(
        "--default-max-tokens",
        type=int,
        help="max_tokens of a request that gives none (up to the context left; default: the model's "
        "generation_config max_new_tokens, else 256)",
    )
    g.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    return p


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (port 0: a free one), for uvicorn to listen on; OSError when the
    address is taken or not this machine's."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def base_url(host: str, port: int) -> str:
    """The URL a client on this machine uses (a wildcard address is reached through loopback)."""
    shown = host.strip("[]")
    if shown in ("0.0.0.0", ""):
        shown = "127.0.0.1"
    elif shown == "::":
        shown = "::1"
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/v1"


def banner(url: str, name: str, chat: bool, api_key: bool, max_queue: int) -> list[str]:
    """What the command prints at start: where, what, and how to call it."""
    key_header = f' -H "Authorization: Bearer ${API_KEY_ENV}"' if api_key else ""
    key_arg = f'os.environ["{API_KEY_ENV}"]' if api_key else '"none"'
    if chat:
        body: dict[str, Any] = {
            "model": name,
            "messages": [{"role": "user", "content": "Hello"}],
            "max_tokens": 64,
        }
        path, call = "chat/completions", "client.chat.completions.create"
        args, result = 'messages=[{"role": "user", "content": "Hello"}]', ".choices[0].message.content"
    else:
        body = {"model": name, "prompt": "Hello", "max_tokens": 64}
        path, call, args, result = (
            "completions",
            "client.completions.create",
            'prompt="Hello"',
            ".choices[0].text",
        )
    endpoints = "/v1/chat/completions and /v1/completions" if chat else "/v1/completions (raw text prompts)"
    lines = [
        f"serving '{name}' at {url} (OpenAI-compatible: /v1/models, {endpoints})",
        f"one request generates at a time, up to {max_queue} wait; "
        + ("an API key is required" if api_key else "no API key required"),
        "try:",
        f"  curl {url}/{path} -H 'Content-Type: application/json'{key_header} \\",
        f"    -d {shlex.quote(json.dumps(body))}",
        "or, in Python (pip install openai):",
        "  import os" if api_key else "",
        "  from openai import OpenAI",
        f'  client = OpenAI(base_url="{url}", api_key={key_arg})',
        f"  print({call}(model={json.dumps(name)}, {args}, max_tokens=64){result})",
        "Ctrl-C stops it.",
    ]
    return [line for line in lines if line]


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    problems = []
    if not 0 <= args.port <= 65535:
        problems.append(f"--port must be in 0..65535 (got {args.port})")
    if args.max_queue < 0:
        problems.append(f"--max-queue must be at least 0 (got {args.max_queue})")
    if args.default_max_tokens is not None and args.default_max_tokens < 1:
        problems.append(f"--default-max-tokens must be at least 1 (got {args.default_max_tokens})")
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV)
    if api_key is not None and not api_key.strip():
        problems.append(f"the API key (--api-key or ${API_KEY_ENV}) is empty")
    if problems:
        for problem in problems:
            print(f"serve: error: {problem}", file=sys.stderr)
        return USER_ERROR
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as err:
        print(
            f"serve: error: needs fastapi and uvicorn ({err}): pip install 'trainer[serve]'", file=sys.stderr
        )
        return USER_ERROR
    try:
        sock = bind(args.host, args.port)  # before loading: a taken port fails in a second, not after
    except OSError as err:
        print(
            f"serve: error: cannot listen on {args.host}:{args.port}: {err.strerror or err}", file=sys.stderr
        )
        return USER_ERROR

    from trainer.inference.server import create_app

    with sock:
        loaded = load_from(args)
        app = create_app(
            loaded,
            model_name=args.model_name,
            api_key=api_key,
            max_queue=args.max_queue,
            default_max_tokens=args.default_max_tokens,
        )
        name = app.state.server.name
        url = base_url(args.host, sock.getsockname()[1])
        if not is_loopback(args.host):
            print(
                f"warning: listening on {args.host}: the model is reachable from the network, by anyone "
                "who can reach this machine"
                + ("" if api_key else " (and no API key is required: --api-key or $" + API_KEY_ENV + ")"),
                file=sys.stderr,
            )
        for line in banner(url, name, loaded.chat, api_key is not None, args.max_queue):
            print(line, flush=True)
        config = uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=5)
        uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    run(main)
