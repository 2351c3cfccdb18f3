"""Quickstart: steer the embedded local model toward positive sentiment, no training needed.

    .venv/bin/python examples/quickstart.py

Uses the prefix-reward value function (VADER sentiment of the response so far) as the value
model, so it runs in seconds. A trained value model (`vas train`, or the one `make demo` caches)
goes in the same place: `value_model="path/to/checkpoint"`.
"""

import vas_api
from estimators.baselines import PrefixRewardValue
from vas_api.commands.generate import local_options
from vas_api.local import LocalServer

PROMPT = [{"role": "user", "content": "Write two sentences about waiting for a delayed train."}]

with LocalServer() as server:  # llama.cpp + SmolLM2-135M-Instruct on 127.0.0.1
    client = vas_api.wrap(server.client(), value_model=PrefixRewardValue("vader"), **local_options(server))
    for beta in (0.0, 4.0):
        resp = client.chat.completions.create(
            model=server.model, messages=PROMPT, max_tokens=40, beta=beta, seed=0
        )
        print(f"--- beta = {beta}: {resp.choices[0].message.content!r}")
        print(resp.vas.summary())
