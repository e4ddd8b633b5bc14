"""Ask the sandbox endpoint through the `openai` client, as a user would; print one JSON report.

Run on the controller by molecule/serve/verify.yml:
    GPUFLEET_API_KEY=... python openai_check.py --base-url http://10.89.0.10:8000/v1 --chat-model smollm2 \
        --embed-model minilm

The key comes through the environment (never the command line, which `ps` shows). Besides the calls
with the key, one call without it must be refused with 401.

Every call is made for real; an exception is recorded as that check's error (the playbook then
fails on it). Exit 0 only when every check passed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from openai import AuthenticationError, OpenAI

PROMPT = "What is a chest x-ray? Answer in one sentence."


def run(name, fn, report):
    started = time.monotonic()
    try:
        result = fn()
        report[name] = {"ok": True, **result}
    except Exception as exc:  # noqa: BLE001 - recorded, then fails the run
        report[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    report[name]["seconds"] = round(time.monotonic() - started, 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--chat-model", required=True)
    parser.add_argument("--embed-model", required=True)
    args = parser.parse_args()
    client = OpenAI(base_url=args.base_url, api_key=os.environ["GPUFLEET_API_KEY"], timeout=120, max_retries=0)
    report: dict = {"base_url": args.base_url}

    def models():
        return {"ids": sorted(m.id for m in client.models.list().data)}

    def chat():
        r = client.chat.completions.create(
            model=args.chat_model, messages=[{"role": "user", "content": PROMPT}], max_tokens=40, temperature=0)
        text = r.choices[0].message.content or ""
        if not text.strip():
            raise ValueError("empty chat answer")
        return {"model": r.model, "text": text, "completion_tokens": r.usage.completion_tokens}

    def completion():
        r = client.completions.create(model=args.chat_model, prompt="The capital of France is", max_tokens=16,
                                      temperature=0)
        text = r.choices[0].text or ""
        if not text.strip():
            raise ValueError("empty completion")
        return {"model": r.model, "text": text}

    def stream():
        chunks = []
        for chunk in client.chat.completions.create(
                model=args.chat_model, messages=[{"role": "user", "content": PROMPT}], max_tokens=40,
                temperature=0, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                chunks.append(chunk.choices[0].delta.content)
        if len(chunks) < 2:
            raise ValueError(f"expected several streamed chunks, got {len(chunks)}")
        return {"chunks": len(chunks), "text": "".join(chunks)}

    def without_key():
        keyless = OpenAI(base_url=args.base_url, api_key="not-the-key", timeout=30, max_retries=0)
        try:
            keyless.models.list()
        except AuthenticationError as exc:
            return {"status": exc.status_code}
        raise ValueError("the endpoint answered a request without the API key")

    def embeddings():
        r = client.embeddings.create(model=args.embed_model, input=["a chest x-ray", "a knee MRI"])
        dims = [len(d.embedding) for d in r.data]
        if len(dims) != 2:
            raise ValueError(f"expected 2 embeddings, got {len(dims)}")
        return {"model": r.model, "count": len(dims), "dims": dims[0]}

    for name, fn in [("without_key", without_key), ("models", models), ("chat", chat), ("completion", completion),
                     ("stream", stream), ("embeddings", embeddings)]:
        run(name, fn, report)
    print(json.dumps(report, indent=1))
    return 0 if all(v["ok"] for k, v in report.items() if isinstance(v, dict)) else 1


if __name__ == "__main__":
    sys.exit(main())
