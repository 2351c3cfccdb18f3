"""Quickstart: steer the embedded local model toward positive sentiment, no training needed.

    .venv/bin/python examples/quickstart.py

Uses the prefix-reward value function (VADER sentiment of the response so far) as the value
model, so it runs in seconds. A trained value model (`vas train`, or the one `make demo` caches)
goes in the same place: `value_model="path/to/checkpoint"`.
"""

from estimators.baselines import PrefixRewardValue
from vas_api.local import LocalServer

PROMPT = [{"role": "user", "content": "Write two sentences about waiting for a delayed train."}]

with LocalServer() as server:  # llama.cpp + SmolLM2-135M-Instruct on 127.0.0.1
    client = server.wrap(value_model=PrefixRewardValue("vader"))  # a vas_api.VASClient
    for beta in (0.0, 4.0):
        resp = client.chat.completions.create(
            model=server.model, messages=PROMPT, max_tokens=40, beta=beta, seed=0
        )
        print(f"--- beta = {beta}: {resp.choices[0].message.content!r}")
        print(resp.vas.summary())

    # The same request streamed: the SDK's ChatCompletionChunk, one per committed token or
    # accepted run of a draft; the last chunk carries the summed usage and the VAS report.
    print("--- beta = 4.0, streamed: ", end="")
    for chunk in client.chat.completions.create(
        model=server.model, messages=PROMPT, max_tokens=40, beta=4.0, seed=0, stream=True
    ):
        if chunk.choices:
            print(chunk.choices[0].delta.content or "", end="", flush=True)
        else:
            print(f"\n{chunk.vas.summary()}")
