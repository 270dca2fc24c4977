"""The builtin ImageReward network: BLIP's ViT and MED text encoder from transformers, with an MLP head.

Architecture of the released ``ImageReward.pt`` (hub repo ``THUDM/ImageReward``):

- ``blip.visual_encoder.*``: BLIP's ViT-L/16 at 224 px (timm layout: ``cls_token``,
  ``pos_embed``, ``patch_embed.proj``, ``blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``,
  ``norm``; pre-norm blocks, LayerNorm eps 1e-6, exact GELU, fused qkv with bias).
- ``blip.text_encoder.*``: BLIP's "MED" BERT-base (``med_config.json``): word + position
  embeddings (no token-type embeddings), post-norm layers, each with self-attention, a
  cross-attention to the image tokens (keys/values from the 1024-wide ViT) and an MLP;
  no pooler. The prompt is tokenised with ``bert-base-uncased`` (plus BLIP's ``[DEC]`` /
  ``[ENC]`` special tokens), padded to 35 tokens; the text starts with ``[CLS]``.
- ``mlp.layers.{0,2,4,6,7}``: 768 -> 1024 -> 128 -> 64 -> 16 -> 1 linear layers without
  activations (the LAION aesthetic head layout, :class:`~evosearch.rewards.aesthetic.AestheticMLP`).

``score = (mlp(text_encoder(prompt, cross-attending to visual_encoder(image))[:, 0]) - mean) / std``
with ``mean = 0.16717362830052426`` and ``std = 1.0333394966054072``.

:func:`load_imagereward_builtin` (the ``backend="builtin"`` of :class:`~evosearch.rewards.imagereward.ImageReward`)
needs no extra dependency. The checkpoint's keys are mapped onto transformers'
``BlipVisionModel`` (the timm ViT renamed: ``cls_token`` ->
``embeddings.class_embedding``, ``blocks.{i}.attn.proj`` -> ``encoder.layers.{i}.self_attn.projection``,
...) and ``BlipTextModel`` (transformers' port of BLIP's MED BERT: same module tree and key
names as ``blip.text_encoder``, a separate ``encoder_hidden_size`` for the
cross-attention keys/values, no token-type embeddings, run with ``is_decoder=False`` for
the bidirectional self-attention ImageReward uses). ``BertModel(add_cross_attention=True)``
was not used: it has token-type embeddings the checkpoint lacks, cross-attention
keys/values sized to its own hidden size (not the ViT's 1024), and it only builds
cross-attention as a causal decoder.
"""

from __future__ import annotations

import json
import os
import re

import torch

from .aesthetic import AestheticMLP
from .base import read_checkpoint
from .pickscore import _from_pretrained

__all__ = ["ImageRewardModel", "load_imagereward_builtin"]

_VIS, _TXT, _MLP = "blip.visual_encoder.", "blip.text_encoder.", "mlp."
# checkpoint keys under the used prefixes that have no counterpart (buffers, not weights)
_IGNORED = {_TXT + "embeddings.position_ids"}
_BLOCK_RENAMES = {
    "norm1": "layer_norm1",
    "attn.qkv": "self_attn.qkv",
    "attn.proj": "self_attn.projection",
    "norm2": "layer_norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_VIS_RENAMES = {
    "cls_token": "embeddings.class_embedding",
    "pos_embed": "embeddings.position_embedding",
    "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
    "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
    "norm.weight": "post_layernorm.weight",
    "norm.bias": "post_layernorm.bias",
}
_MED_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
             "hidden_act", "max_position_embeddings", "layer_norm_eps", "pad_token_id")


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    sd = read_checkpoint(path, "checkpoint")
    for wrapper in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict) and not any(k.startswith(_VIS) for k in sd):
            sd = sd[wrapper]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"checkpoint: {path} does not hold a state dict of tensors")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    if not any(k.startswith(_VIS) for k in sd) or not any(k.startswith(_TXT) for k in sd):
        sample = sorted(sd)[:8]
        raise ValueError(f"checkpoint: {path} is not an ImageReward checkpoint: expected keys "
                         f"'{_VIS}*', '{_TXT}*' and '{_MLP}layers.*', found e.g. {sample}")
    return sd


def _vision_config(sd: dict[str, torch.Tensor], path: str):
    """BLIP ViT hyper-parameters read off the checkpoint (heads = width / 64, BLIP's rule for base and large)."""
    from transformers import BlipVisionConfig

    try:
        width = int(sd[_VIS + "cls_token"].shape[-1])
        patch = int(sd[_VIS + "patch_embed.proj.weight"].shape[-1])
        positions = int(sd[_VIS + "pos_embed"].shape[1])
        intermediate = int(sd[_VIS + "blocks.0.mlp.fc1.weight"].shape[0])
    except KeyError as e:
        raise ValueError(f"checkpoint: {path} lacks the ImageReward vision key {e.args[0]!r}") from None
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(re.escape(_VIS) + r"blocks\.(\d+)\.", k)))
    grid = round((positions - 1) ** 0.5)
    if grid * grid != positions - 1 or width % 64:
        raise ValueError(f"checkpoint: {path} has an unexpected ViT shape (pos_embed {positions} tokens, width "
                         f"{width}); expected 1 + a square number of patches and a width divisible by 64")
    return BlipVisionConfig(hidden_size=width, intermediate_size=intermediate, num_hidden_layers=depth,
                            num_attention_heads=width // 64, image_size=grid * patch, patch_size=patch,
                            hidden_act="gelu", layer_norm_eps=1e-6, attention_dropout=0.0)


def _read_med_config(med_config) -> dict:
    if isinstance(med_config, dict):
        return dict(med_config)
    path = os.path.expanduser(os.fspath(med_config))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"med_config: BLIP text-encoder config (med_config.json) not found: {path}")
    try:
        with open(path) as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"med_config: could not read {path} as JSON: {e}") from e
    if not isinstance(cfg, dict):
        raise ValueError(f"med_config: {path} does not hold a JSON object")
    return cfg


def _text_config(sd: dict[str, torch.Tensor], med_config, vision_width: int, path: str):
    """BlipTextConfig from med_config.json, or inferred from the checkpoint (BERT conventions: head dim 64)."""
    from transformers import BlipTextConfig

    if med_config is not None:
        cfg = _read_med_config(med_config)
        missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                               "intermediate_size") if k not in cfg]
        if missing:
            raise ValueError(f"med_config: missing BERT config entries {missing}")
        if cfg.get("add_cross_attention") is False:
            raise ValueError("med_config: add_cross_attention is false, but ImageReward's text encoder "
                             "cross-attends to the image")
        kwargs = {k: cfg[k] for k in _MED_KEYS if k in cfg}
    else:
        try:
            vocab, hidden = sd[_TXT + "embeddings.word_embeddings.weight"].shape
            positions = sd[_TXT + "embeddings.position_embeddings.weight"].shape[0]
            intermediate = sd[_TXT + "encoder.layer.0.intermediate.dense.weight"].shape[0]
        except KeyError as e:
            raise ValueError(f"checkpoint: {path} lacks the ImageReward text key {e.args[0]!r}") from None
        layers = 1 + max(int(m.group(1)) for k in sd
                         if (m := re.match(re.escape(_TXT) + r"encoder\.layer\.(\d+)\.", k)))
        kwargs = dict(vocab_size=int(vocab), hidden_size=int(hidden), num_hidden_layers=layers,
                      num_attention_heads=max(1, int(hidden) // 64), intermediate_size=int(intermediate),
                      max_position_embeddings=int(positions))
    kwargs.setdefault("hidden_act", "gelu")
    kwargs.setdefault("layer_norm_eps", 1e-12)
    kwargs.setdefault("pad_token_id", 0)
    # is_decoder=True only makes BlipTextLayer build its cross-attention; forward runs with is_decoder=False
    return BlipTextConfig(**kwargs, encoder_hidden_size=vision_width, is_decoder=True, hidden_dropout_prob=0.0,
                          attention_probs_dropout_prob=0.0)


class ImageRewardModel(torch.nn.Module):
    """The builtin ImageReward network: ``BlipVisionModel`` + ``BlipTextModel`` (cross-attention) + MLP head."""

    def __init__(self, vision_config, text_config):
        super().__init__()
        from transformers import BlipVisionModel
        from transformers.models.blip.modeling_blip_text import BlipTextModel

        self.visual_encoder = BlipVisionModel(vision_config)
        self.text_encoder = BlipTextModel(text_config, add_pooling_layer=False)
        self.mlp = AestheticMLP(text_config.hidden_size)

    def checkpoint_keys(self) -> dict[str, str]:
        """Map of released checkpoint key -> this module's state-dict key."""
        out = {}
        inverse = {v: c for c, v in _VIS_RENAMES.items()}
        inverse_block = {v: c for c, v in _BLOCK_RENAMES.items()}
        for k in self.visual_encoder.state_dict():
            if k in inverse:
                ck = inverse[k]
            else:
                m = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", k)
                ck = f"blocks.{m.group(1)}.{inverse_block[m.group(2)]}.{m.group(3)}"
            out[_VIS + ck] = "visual_encoder." + k
        for k in self.text_encoder.state_dict():
            out[_TXT + k] = "text_encoder." + k
        for k in self.mlp.state_dict():
            out[_MLP + k] = "mlp." + k
        return out

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.visual_encoder(pixel_values=pixel_values).last_hidden_state

    def text_features(self, input_ids, attention_mask, image_embeds) -> torch.Tensor:
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        out = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask,
                                encoder_hidden_states=image_embeds, encoder_attention_mask=image_atts,
                                is_decoder=False)
        return out.last_hidden_state[:, 0, :]


def load_imagereward_builtin(checkpoint: str | os.PathLike, med_config=None) -> ImageRewardModel:
    """Build :class:`ImageRewardModel` for a released ``ImageReward.pt`` state dict and load it (CPU, eval).

    Every vision, text and MLP weight must be present with the right shape; other keys (the
    BLIP ``vision_proj`` / ``text_proj`` heads the release also carries) are ignored, as
    ImageReward's own loader does. Errors name ``checkpoint`` or ``med_config``.
    """
    path = os.path.expanduser(os.fspath(checkpoint))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint: ImageReward checkpoint file not found: {path}")
    sd = _read_state_dict(path)
    vcfg = _vision_config(sd, path)
    tcfg = _text_config(sd, med_config, vcfg.hidden_size, path)
    with torch.random.fork_rng(devices=[]):  # the random init is overwritten; keep the caller's RNG untouched
        model = ImageRewardModel(vcfg, tcfg)
    mapping = model.checkpoint_keys()
    used = (_VIS, _TXT, _MLP)
    missing = sorted(k for k in mapping if k not in sd)
    unexpected = sorted(k for k in sd if k.startswith(used) and k not in mapping and k not in _IGNORED)
    if missing or unexpected:
        where = "med_config" if med_config is not None and any(k.startswith(_TXT) for k in missing + unexpected) \
            else "checkpoint"
        source = "med_config (text) and the checkpoint's shapes (vision)" if med_config is not None \
            else "the checkpoint's shapes"
        raise ValueError(f"{where}: the checkpoint {path} does not match the ImageReward architecture built from "
                         f"{source} (vision {vcfg.num_hidden_layers} layers x {vcfg.hidden_size}, text "
                         f"{tcfg.num_hidden_layers} layers x {tcfg.hidden_size}): missing keys {missing[:20]}"
                         f"{' ...' if len(missing) > 20 else ''}, unexpected keys {unexpected[:20]}"
                         f"{' ...' if len(unexpected) > 20 else ''}")
    own = model.state_dict()
    wrong = {k: (tuple(sd[k].shape), tuple(own[v].shape)) for k, v in mapping.items()
             if tuple(sd[k].shape) != tuple(own[v].shape)}
    if wrong:
        where = "med_config" if med_config is not None and any(k.startswith(_TXT) for k in wrong) else "checkpoint"
        raise ValueError(f"{where}: the checkpoint {path} has tensors of the wrong shape for the architecture "
                         f"built from {'med_config' if where == 'med_config' else 'its shapes'} "
                         f"(got, expected): {wrong}")
    model.load_state_dict({v: sd[k].float() for k, v in mapping.items()}, strict=True)
    return model.eval().requires_grad_(False)


def _prepare_tokenizer(tokenizer, param="tokenizer"):
    """BLIP's tokenizer: bert-base-uncased plus the ``[DEC]`` bos and ``[ENC]`` special tokens."""
    if isinstance(tokenizer, (str, os.PathLike)):
        from transformers import BertTokenizer

        tokenizer = _from_pretrained(BertTokenizer, tokenizer, param)
    vocab = tokenizer.get_vocab()
    if "[DEC]" not in vocab:
        tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    if "[ENC]" not in tokenizer.get_vocab():
        tokenizer.add_tokens(["[ENC]"], special_tokens=True)
    return tokenizer
