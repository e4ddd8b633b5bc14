"""Ask a deployed strategy's endpoint for a chat answer and an embedding, with the OpenAI client.

    python -m gpufleet.smoke -i inventory/sandbox -s sandbox [--api-key KEY]

The key is --api-key, else $GPUFLEET_API_KEY, else the one the first apply made for this inventory
(gpufleet.endpoint_key); an endpoint with serve_auth open ignores it.
"""
from __future__ import annotations

import argparse
import sys

from . import endpoint_key
from .api import plan_from_inventory
from .serve_config import endpoint


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpufleet.smoke", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-i", "--inventory", required=True)
    parser.add_argument("-s", "--strategy", default="sandbox")
    parser.add_argument("--strategies-dir")
    parser.add_argument("--api-key")
    args = parser.parse_args(argv)

    from openai import OpenAI

    plan = plan_from_inventory(args.inventory, args.strategy, args.strategies_dir)
    url = endpoint(plan)
    api_key = args.api_key or endpoint_key.read_key(args.inventory) or "none"
    client = OpenAI(base_url=url, api_key=api_key, timeout=120)
    served = sorted(m.id for m in client.models.list().data)
    print(f"endpoint {url} serves: {', '.join(served)}")
    status = 0
    for service in plan["services"]:
        name = service["route"]["model_name"]
        if service["engine_args"].get("runner") == "pooling":
            vector = client.embeddings.create(model=name, input="What is a chest x-ray?").data[0].embedding
            print(f"{name}: embedding of length {len(vector)}")
            status |= 0 if vector else 1
        else:
            reply = client.chat.completions.create(
                model=name, max_tokens=48, temperature=0,
                messages=[{"role": "user", "content": "What is a chest x-ray? Answer in one sentence."}])
            text = reply.choices[0].message.content or ""
            print(f"{name}: {text.strip()}")
            status |= 0 if text.strip() else 1
    print(f"\ntry it by hand ({endpoint_key.usage(args.inventory)}):\n"
          f"  curl {url}/models -H \"Authorization: Bearer $OPENAI_API_KEY\"\n"
          f"  curl {url}/chat/completions -H \"Authorization: Bearer $OPENAI_API_KEY\" "
          f"-H 'Content-Type: application/json' "
          f"-d '{{\"model\": \"{plan['services'][0]['route']['model_name']}\", \"messages\": "
          f"[{{\"role\": \"user\", \"content\": \"Hello\"}}]}}'")
    return status


if __name__ == "__main__":
    sys.exit(main())
