"""Regenerate tests/data/tiny_tokenizer: a ~500-token byte-level BPE for fast offline tests.

It copies SmolLM2's pipeline (ByteLevel pre-tokenizer with the GPT-2 regex, no prefix space,
no normalizer, ChatML special tokens) so the value model's tail re-tokenization is tested
against the same kind of tokenizer, but trains its own small vocabulary on the corpus below,
which contains words that merge across typical joins ("hel" + "lo") and multi-byte text.

    .venv/bin/python tests/data/make_tiny_tokenizer.py
"""

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "hello world, hello there! Hello again.",
    "Once upon a time there was a little cat who lived in a big house.",
    "The happy dog ran to the park and played all day in the sun.",
    "I love this movie. It was wonderful, great and amazing!",
    "I hate this movie. It was terrible, awful and boring.",
    "café crème brûlée naïve résumé déjà vu",
    "日本語のテキスト 日本 東京 こんにちは 世界",
    "emoji 😀 😃 🎉 ❤️ 👍🏽",
    "numbers 12345 3.14159 2024-01-01 100%",
    "code: def f(x): return x ** 2  # square\n\tindented\n\nnew paragraph",
    "user\nWrite a short story.\nassistant\nSure, here is a story:",
]


def main() -> None:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=520,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|im_end|>",
    )
    out = Path(__file__).parent / "tiny_tokenizer"
    fast.save_pretrained(str(out))
    print(f"wrote {out} ({len(fast)} tokens)")


if __name__ == "__main__":
    main()
