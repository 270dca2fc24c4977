"""FoundationVision's class-conditional VAR (https://github.com/FoundationVision/VAR) as a
:class:`~evosearch.pipelines.var.adapter.VARAdapter`: :class:`FoundationVARAdapter`.

Wrap a ``VAR`` model object (its VQVAE is reached through ``var.vae_proxy[0]`` /
``var.vae_quant_proxy[0]``) as ``VARPipeline(FoundationVARAdapter(var))``. Used parts:
``patch_nums``, ``first_l``, ``num_classes``, ``Cvae``, ``V``, ``class_emb``,
``pos_start``, ``pos_1LC``, ``lvl_embed``/``lvl_1L``, ``word_embed``, ``shared_ada_lin``,
``blocks`` (each called as ``b(x=, cond_BD=, attn_bias=None)`` with
``b.attn.kv_caching(True)``; the adapter moves ``b.attn.cached_k``/``cached_v`` into and
out of the state around every call), ``get_logits``, the quantiser's ``embedding`` and
``get_next_autoregressive_input``, and the VQVAE's ``fhat_to_img``. Prompts are ImageNet
class ids (an int or a string such as ``"207"``). VAR's FID-evaluation settings (its
README: ``autoregressive_infer_cfg(..., cfg=1.5, top_p=0.96, top_k=900)``, the cfg ramped
linearly over scales) are ``guidance_scale=2.5, cfg_schedule="linear", top_k=900,
top_p=0.96``, the adapter's defaults.

VAR's code is not copied: the adapter calls these attributes, so it follows whatever
version of the model object it is given (see :mod:`evosearch.pipelines.var`).
"""

from __future__ import annotations

import numpy as np
import torch

from .adapter import VARAdapter
from .caches import _ModuleCaches
from .state import VARState


def _parse_class_label(prompt, num_classes: int) -> int:
    allowed = f"a class id 0-{num_classes - 1} (an int, or a string such as '207')"
    if torch.is_tensor(prompt) and prompt.numel() == 1:
        prompt = int(prompt.item())
    if isinstance(prompt, np.integer):
        prompt = int(prompt)
    if isinstance(prompt, str) and prompt.strip().isdigit():
        prompt = int(prompt.strip())
    if isinstance(prompt, int) and not isinstance(prompt, bool) and 0 <= prompt < num_classes:
        return prompt
    raise ValueError(f"prompt: expected {allowed}, got {prompt!r}")


class FoundationVARAdapter(VARAdapter):
    """FoundationVision's class-conditional ``VAR`` (models/var.py) by its public attributes.

    ``var``: a ``VAR`` model object (with its VQVAE attached, as ``build_vae_var`` returns
    it). Prompts: ImageNet class ids. Defaults: VAR's FID settings (cfg=1.5 -> guidance_scale
    2.5 on the linear ramp, top_k=900, top_p=0.96). With ``top_k=1`` the Stepper reproduces
    ``autoregressive_infer_cfg(..., top_k=1)`` (tested when the VAR code is importable).
    """

    default_guidance_scale = 2.5
    default_top_k = 900
    default_top_p = 0.96
    default_temperature = 1.0
    default_cfg_schedule = "linear"

    def __init__(self, var):
        for name in ("patch_nums", "class_emb", "blocks", "get_logits", "word_embed", "vae_proxy", "vae_quant_proxy"):
            if not hasattr(var, name):
                raise TypeError(f"var: expected FoundationVision's VAR model object (missing attribute {name!r}), "
                                f"got {type(var).__name__}")
        self.var = var
        self.module = var
        self.patch_nums = tuple(int(p) for p in var.patch_nums)
        self.num_scales = len(self.patch_nums)
        self.categories = int(var.V)
        ends = np.cumsum([p * p for p in self.patch_nums])
        self.begin_ends = [(int(e - p * p), int(e)) for p, e in zip(self.patch_nums, ends)]

    def tokens_at(self, k: int) -> int:
        return self.patch_nums[k] ** 2

    def encode(self, prompt, negative_prompt=None):
        if negative_prompt not in (None, ""):
            raise ValueError("negative_prompt: class-conditional VAR has no negative prompt (the unconditional rows "
                             "use the null class); pass None")
        return torch.tensor([_parse_class_label(prompt, int(self.var.num_classes))], dtype=torch.long)

    def init_state(self, n: int, cond) -> VARState:
        pn = self.patch_nums[-1]
        f_hat = torch.zeros(n, int(self.var.Cvae), pn, pn, device=self.device)
        return VARState(0, f_hat)

    def forward(self, state, k, cond, cfg):
        var = self.var
        n, g = len(state), (2 if cfg else 1)
        label = cond.to(self.device).expand(n)
        labels = torch.cat([label, torch.full_like(label, int(var.num_classes))]) if cfg else label
        cond_BD = var.class_emb(labels)
        lvl_pos = var.lvl_embed(var.lvl_1L) + var.pos_1LC
        bg, ed = self.begin_ends[k]
        if k == 0:
            first_l = int(var.first_l)
            x = (cond_BD.unsqueeze(1).expand(g * n, first_l, -1) + var.pos_start.expand(g * n, first_l, -1)
                 + lvl_pos[:, :first_l])
        else:
            x = var.word_embed(state.next_input) + lvl_pos[:, bg:ed]
            x = x.repeat(g, 1, 1)
        with _ModuleCaches([b.attn for b in var.blocks], state.kv, g) as caches:
            gss = var.shared_ada_lin(cond_BD)
            for b in var.blocks:
                x = b(x=x, cond_BD=gss, attn_bias=None)
            logits = var.get_logits(x, cond_BD)
            kv = caches.collect()
        return logits[:n], (logits[n:] if cfg else None), kv

    def update(self, state, k, idx, kv):
        quant = self.var.vae_quant_proxy[0]
        pn = self.patch_nums[k]
        n = len(state)
        h = quant.embedding(idx).transpose(1, 2).reshape(n, int(self.var.Cvae), pn, pn)
        f_hat, nxt = quant.get_next_autoregressive_input(k, self.num_scales, state.f_hat.clone(), h)
        next_input = None
        if k != self.num_scales - 1:
            next_input = nxt.reshape(n, int(self.var.Cvae), -1).transpose(1, 2)
        return VARState(k + 1, f_hat, next_input, kv, state.tokens + (idx,), dict(state.extra))

    def decode(self, state):
        return self.var.vae_proxy[0].fhat_to_img(state.f_hat).add(1).mul(0.5)
