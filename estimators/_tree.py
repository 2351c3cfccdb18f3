"""Scoring many token sequences that share a cached prefix in one forward pass.

Sequences (the ids of prefix + candidate, or of prefix + drafted path + candidate) are merged
into a token trie below the cached prefix; the trie is flattened in depth-first preorder and run
as ONE causal sequence whose attention mask lets each node see the cached prefix, its ancestors
and itself only, with position ids = its depth. Every node then computes exactly what it would
in its own sequence, shared tokens are computed once, and no padding or k-fold copy of the
cache is needed. In preorder the ancestors of node q are the nodes a <= q whose subtree
[a, end[a]) contains q, which makes the mask two vectorised comparisons.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["TokenTree", "build_tree"]


@dataclass(slots=True)
class TokenTree:
    """A flattened token trie hanging below `offset` cached tokens.

    Attributes:
        offset: number of cached tokens the nodes hang below (position of trie depth 0).
        tokens: node token ids in preorder, length N.
        depth: absolute position of each node (offset + depth in the trie), length N.
        end: for node a, one past the last node of its subtree, length N.
        last: for each input sequence, the node holding its last token, or -1 when the whole
            sequence lies in the cached prefix.
        trunk: how many leading nodes every sequence passes through (the shared path).
    """

    offset: int
    tokens: list[int]
    depth: list[int]
    end: list[int]
    last: list[int]
    trunk: int

    def __len__(self) -> int:
        return len(self.tokens)

    def inputs(
        self, *, device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Model inputs for one forward over the cached prefix.

        Returns:
            input_ids (1, N), position_ids (1, N), and an additive float attention mask
            (1, 1, N, offset + N): 0 where a node may attend, dtype-min elsewhere.
        """
        n, offset = len(self.tokens), self.offset
        ids = torch.tensor(self.tokens, dtype=torch.long, device=device)[None]  # (1, N)
        pos = torch.tensor(self.depth, dtype=torch.long, device=device)[None]  # (1, N)
        idx = torch.arange(n, device=device)
        end = torch.tensor(self.end, dtype=torch.long, device=device)
        # allowed[q, a]: a is q or an ancestor of q  <=>  a <= q < end[a]
        allowed = (idx[None, :] <= idx[:, None]) & (idx[:, None] < end[None, :])  # (N, N)
        mask = torch.zeros(n, offset + n, dtype=dtype, device=device)  # (N, P + N)
        mask[:, offset:].masked_fill_(~allowed, torch.finfo(dtype).min)
        return ids, pos, mask[None, None]


def build_tree(seqs: Sequence[Sequence[int]], offset: int) -> TokenTree:
    """Merge `seqs` below their first `offset` tokens (which all share) into a TokenTree.

    Args:
        seqs: full token id sequences; seqs[i][:offset] must be the same for all i.
        offset: number of leading tokens already in the KV cache.

    Returns:
        The flattened trie; `last[i]` locates the end of seqs[i] (-1 if len(seqs[i]) <= offset).
    """
    # Trie with node 0 = the root (the cached prefix); children keyed by token id, in order.
    children: list[dict[int, int]] = [{}]
    token: list[int] = [-1]
    ends: list[int] = []
    for seq in seqs:
        node = 0
        for pos in range(offset, len(seq)):
            t = seq[pos]
            nxt = children[node].get(t)
            if nxt is None:
                nxt = len(token)
                children[node][t] = nxt
                children.append({})
                token.append(t)
            node = nxt
        ends.append(node)

    # Iterative preorder from the root; new_id[old node] = its preorder index.
    new_id = [-1] * len(token)
    tokens: list[int] = []
    depth: list[int] = []
    end: list[int] = []
    stack: list[tuple[int, int]] = [(c, offset) for c in reversed(children[0].values())]
    while stack:
        node, d = stack.pop()
        if node < 0:  # marker: subtree of ~node is finished
            end[new_id[~node]] = len(tokens)
            continue
        new_id[node] = len(tokens)
        tokens.append(token[node])
        depth.append(d)
        end.append(-1)
        stack.append((~node, d))
        stack.extend((c, d + 1) for c in reversed(children[node].values()))

    # Trunk: the chain from the root while every sequence goes the same way.
    # A sequence ending at a node (or at the root) stops the shared chain there.
    ending = set(ends)
    trunk, node = 0, 0
    while len(children[node]) == 1 and node not in ending:
        node = next(iter(children[node].values()))
        trunk += 1
    last = [new_id[e] if e > 0 else -1 for e in ends]
    return TokenTree(offset=offset, tokens=tokens, depth=depth, end=end, last=last, trunk=trunk)
