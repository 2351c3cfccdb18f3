"""Value scoring of B concurrent requests: one batched forward (ValueModel.score_many with keys)
against one forward per request, on the default 4-layer SmolLM2 value backbone (random head: the
timing does not depend on the weights), 1 torch thread. Each step scores a 6-token draft with 10
candidates at 7 positions per request, on its own cached ~40-token prefix that grows each step.
Checks that both give the same values (1e-4) and prints ms per step.

    python benchmarks/value_batch_speed.py
"""
import random
import time

import torch

torch.set_num_threads(1)
from estimators import ValueModel

t0=time.time(); m = ValueModel.from_backbone(num_layers=4, device="cpu"); print("load", time.time()-t0)
torch.nn.init.normal_(m.head.weight, std=0.1)
rng = random.Random(0)
words = [" good", " bad", " fine", " room", " staff", " the", " was", " and", " very", " nice", " clean", " slow"]
def reqs(B, step, prefixes):
    out = []
    for i in range(B):
        path = [rng.choice(words) for _ in range(6)]
        cands = [[rng.choice(words) for _ in range(10)] for _ in range(7)]
        out.append((prefixes[i], path, cands))
    return out
for B in (1, 4, 8, 16):
    prefixes = {i: f"<|im_start|>user\nWrite a short review of hotel number {i} near the station.<|im_end|>\n<|im_start|>assistant\n" for i in range(B)}
    tb = ts = 0.0
    m.reset_cache()
    for step in range(4):
        r = reqs(B, step, prefixes)
        t = time.perf_counter(); a = m.score_many(r, keys=list(range(B))); tb += time.perf_counter() - t
        t = time.perf_counter(); b = m.score_many(r, keys=[("s", i) for i in range(B)]) if False else [m._score_draft_in(m._keyed_slot(("s", i)), *r[i]) for i in range(B)]; ts += time.perf_counter() - t
        for x, y in zip(a, b):
            for u, v in zip(x, y): assert torch.allclose(u, v, atol=1e-4), (u - v).abs().max()
        for i in range(B): prefixes[i] += r[i][1][0] + r[i][1][1]
    print(f"B={B}: batched {tb/4*1000:.0f} ms/step, one by one {ts/4*1000:.0f} ms/step")
