"""Offline tokenizers for the tiny pipelines: nothing is downloaded, the files are built locally.

* CLIP: a byte-level ``CLIPTokenizer`` over a 514-entry vocabulary (the 256
  byte-level unicode characters, their ``</w>`` variants, ``<|startoftext|>``
  = 512 and ``<|endoftext|>`` = 513) with no BPE merges, so every word is
  spelled out byte by byte. ``model_max_length`` is 77 as in real CLIP.
* T5: a ``T5TokenizerFast`` over a character-level Unigram model (``<pad>`` = 0,
  ``</s>`` = 1, ``<unk>`` = 2, ``"▁"``, the printable ASCII characters and their
  ``"▁"``-prefixed variants; 192 entries) with a ``$A </s>`` post-processor,
  ``model_max_length`` 512.
* Llama: the same character-level vocabulary as a ``LlamaTokenizerFast``, standing in
  for HunyuanVideo's Llama tokenizer.

The tokenizer files are written once per process to a temporary directory
(removed at exit) and re-loaded for every pipeline, so repeated calls are cheap.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import string
import tempfile
import threading

__all__ = ["clip_tokenizer", "t5_tokenizer", "llama_tokenizer", "CLIP_VOCAB_SIZE", "T5_VOCAB_SIZE"]

CLIP_MAX_LENGTH = 77
T5_MAX_LENGTH = 512

_TOKENIZER_DIR: str | None = None
_TOKENIZER_LOCK = threading.Lock()


def _bytes_to_unicode() -> list[str]:
    """GPT-2 / CLIP byte -> printable unicode character table, in byte order of CLIP."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return [chr(c) for c in cs]


def _clip_vocab() -> dict[str, int]:
    chars = _bytes_to_unicode()
    vocab: dict[str, int] = {}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab


def _t5_vocab() -> list[tuple[str, float]]:
    chars = [c for c in string.printable if not c.isspace()]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + c, -2.5) for c in chars]
    vocab += [(c, -3.0) for c in chars]
    return vocab


CLIP_VOCAB_SIZE = len(_clip_vocab())  # 514
CLIP_BOS_ID = CLIP_VOCAB_SIZE - 2  # <|startoftext|>
CLIP_EOS_ID = CLIP_VOCAB_SIZE - 1  # <|endoftext|> (also the pad token, as in real CLIP)
T5_VOCAB_SIZE = len(_t5_vocab())  # 192


def _remove_dir(path: str, owner_pid: int) -> None:
    if os.getpid() == owner_pid:  # a forked child must not delete its parent's files
        shutil.rmtree(path, ignore_errors=True)


def _write_json(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False)


def _write_t5(directory: str) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    t5 = Tokenizer(models.Unigram(_t5_vocab(), unk_id=2, byte_fallback=False))
    t5.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True),
        ]
    )
    t5.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    t5.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    t5.save(os.path.join(directory, "tokenizer.json"))


def _tokenizer_dir() -> str:
    """Write the tokenizer files once per process; return the directory."""
    global _TOKENIZER_DIR
    with _TOKENIZER_LOCK:
        if _TOKENIZER_DIR is not None and os.path.isdir(_TOKENIZER_DIR):
            return _TOKENIZER_DIR
        root = tempfile.mkdtemp(prefix="evosearch-tiny-tokenizers-")
        atexit.register(_remove_dir, root, os.getpid())

        clip_dir = os.path.join(root, "clip")
        os.makedirs(clip_dir)
        _write_json(os.path.join(clip_dir, "vocab.json"), _clip_vocab())
        with open(os.path.join(clip_dir, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n")  # header line only: no merges
        _write_json(os.path.join(clip_dir, "tokenizer_config.json"), {"model_max_length": CLIP_MAX_LENGTH})

        t5_dir = os.path.join(root, "t5")
        os.makedirs(t5_dir)
        _write_t5(t5_dir)

        _TOKENIZER_DIR = root
        return root


def _t5_file() -> str:
    return os.path.join(_tokenizer_dir(), "t5", "tokenizer.json")


def clip_tokenizer():
    """A fresh byte-level ``CLIPTokenizer`` (vocab 514, bos 512, eos = pad = 513, max length 77)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(
        os.path.join(_tokenizer_dir(), "clip"), model_max_length=CLIP_MAX_LENGTH
    )


def t5_tokenizer():
    """A fresh character-level ``T5TokenizerFast`` (vocab 192, pad 0, eos 1, unk 2, max length 512)."""
    kwargs = dict(
        tokenizer_file=_t5_file(),
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=T5_MAX_LENGTH,
    )
    try:
        from transformers import T5TokenizerFast

        return T5TokenizerFast(extra_ids=0, **kwargs)
    except Exception:  # pragma: no cover - fallback for unusual transformers builds
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast(**kwargs)


def llama_tokenizer():
    """The character-level vocabulary of :func:`t5_tokenizer` as a ``LlamaTokenizerFast`` (pad 0, eos 1, right padding),
    standing in for HunyuanVideo's Llama tokenizer."""
    from transformers import LlamaTokenizerFast

    return LlamaTokenizerFast(tokenizer_file=_t5_file(), bos_token="<pad>", eos_token="</s>", unk_token="<unk>",
                              pad_token="<pad>", padding_side="right", model_max_length=T5_MAX_LENGTH)
