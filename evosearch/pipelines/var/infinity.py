"""FoundationVision's Infinity text-to-image models (https://github.com/FoundationVision/Infinity)
as a :class:`~evosearch.pipelines.var.adapter.VARAdapter`: :class:`InfinityAdapter`.

``VARPipeline(InfinityAdapter(infinity, vae, text_tokenizer, text_encoder,
scale_schedule))``. Prompts are encoded with the T5 tokenizer/encoder
(``last_hidden_state``, compacted by the attention mask as Infinity expects); the
unconditional rows use the negative prompt or the model's ``cfg_uncond``. Used parts:
``text_norm``, ``text_proj_for_sos``, ``text_proj_for_ca``, ``cfg_uncond``,
``pos_start``, ``shared_ada_lin``, ``block_chunks`` (each ``chunk.module`` called block
by block with ``scale_ind``, ``rope2d_freqs_grid``), ``add_lvl_embeding`` (+
``add_lvl_embeding_only_first_block``), ``unregistered_blocks`` (``.sa``/``.attn`` KV
caches), ``get_logits``, ``use_bit_label``, ``word_embed``, ``norm0_ve``,
``apply_spatial_patchify``, and the BSQ VAE's ``quantizer.lfq.indices_to_codes``,
``quantizer.z_interplote_up`` and ``decode``. Tokens are bit labels: each position draws
``d`` binary choices, so ``draws(k) = h_k w_k d`` with two categories each. Guidance is
applied on the logits (Infinity's ``cfg_insertion_layer=[0]``, the default of its
scripts and of TTS-VAR's). Infinity's ``tau`` is ``temperature``; of its script defaults
(cfg 3, tau 0.5, top_k=900, top_p=0.97) top_k does nothing on two-way bit draws and top_p
drops a bit value whose probability is at most 0.03. Infinity's attention needs
flash-attn (CUDA), so this adapter could not be exercised on a CPU-only machine: its test
only imports it.

Infinity's code is not copied: the adapter calls these attributes, so it follows
whatever version of the model object it is given (see :mod:`evosearch.pipelines.var`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .adapter import VARAdapter
from .caches import _ModuleCaches
from .state import VARState


class InfinityAdapter(VARAdapter):
    """FoundationVision's Infinity (text-to-image, bitwise tokens) by its public attributes.

    Args:
        infinity: the ``Infinity`` transformer (as ``tools/run_infinity.load_transformer`` returns it).
        vae: its BSQ VAE (``load_visual_tokenizer``).
        text_tokenizer, text_encoder: the T5 tokenizer and encoder (``load_tokenizer``).
        scale_schedule: the (t, h, w) token grid per scale, e.g.
            ``[(1, h, w) for _, h, w in dynamic_resolution_h_w[1.0]["1M"]["scales"]]``.
        max_text_length: tokenizer max_length (512 in Infinity's scripts).
    Defaults follow Infinity's scripts: guidance 3 (``cfg_list``), temperature 0.5
    (``tau``), top_k 900 (no effect on two-way draws), top_p 0.97.
    """

    default_guidance_scale = 3.0
    default_top_k = 900
    default_top_p = 0.97
    default_temperature = 0.5
    default_cfg_schedule = "constant"

    def __init__(self, infinity, vae, text_tokenizer, text_encoder, scale_schedule, max_text_length: int = 512):
        for name in ("unregistered_blocks", "codebook_dim", "text_proj_for_sos", "text_proj_for_ca", "get_logits",
                     "word_embed", "pos_start"):
            if not hasattr(infinity, name):
                raise TypeError(f"infinity: expected FoundationVision's Infinity model object (missing attribute "
                                f"{name!r}), got {type(infinity).__name__}")
        if not getattr(infinity, "use_bit_label", False):
            raise ValueError("infinity: only bit-label Infinity models (use_bit_label=1, the released ones) are "
                             "supported")
        self.infinity, self.vae = infinity, vae
        self.module = infinity
        self.tokenizer, self.text_encoder = text_tokenizer, text_encoder
        self.max_text_length = int(max_text_length)
        self.scale_schedule = [tuple(int(v) for v in s) for s in scale_schedule]
        if any(len(s) != 3 for s in self.scale_schedule):
            raise ValueError(f"scale_schedule: expected (t, h, w) triples, got {scale_schedule!r}")
        self.patchify = bool(getattr(infinity, "apply_spatial_patchify", False))
        self.vae_schedule = ([(t, 2 * h, 2 * w) for t, h, w in self.scale_schedule] if self.patchify
                             else list(self.scale_schedule))
        self.num_scales = len(self.scale_schedule)
        self.categories = 2
        self.bits = int(infinity.codebook_dim)  # bits per token position (x4 with spatial patchify)
        self.code_channels = self.bits // 4 if self.patchify else self.bits
        self._ca_cache: dict = {}

    def tokens_at(self, k: int) -> int:
        t, h, w = self.scale_schedule[k]
        return t * h * w

    def draws_at(self, k: int) -> int:
        return self.tokens_at(k) * self.bits

    def _text(self, prompt: str):
        tok = self.tokenizer(text=[prompt], max_length=self.max_text_length, padding="max_length", truncation=True,
                             return_tensors="pt")
        dev = next(self.text_encoder.parameters()).device
        ids, mask = tok.input_ids.to(dev), tok.attention_mask.to(dev)
        feats = self.text_encoder(input_ids=ids, attention_mask=mask)["last_hidden_state"].float()
        return feats[0, : int(mask.sum())].to(self.device)

    def encode(self, prompt, negative_prompt=None):
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"prompt: Infinity needs a non-empty text prompt, got {prompt!r}")
        cond = self._text(prompt)
        if negative_prompt:
            uncond = self._text(negative_prompt)
        else:
            uncond = self.infinity.cfg_uncond[: cond.shape[0]].to(self.device, cond.dtype)
        self._ca_cache = {}
        return {"cond": cond, "uncond": uncond}

    def init_state(self, n: int, cond) -> VARState:
        t, h, w = self.vae_schedule[-1]
        summed = torch.zeros(n, self.code_channels, t, h, w, device=self.device)
        return VARState(0, summed)

    def _text_inputs(self, cond, n: int, cfg: bool):
        key = (n, cfg)
        if key not in self._ca_cache:
            rows = [cond["cond"]] * n + ([cond["uncond"]] * n if cfg else [])
            lens = torch.tensor([r.shape[0] for r in rows], dtype=torch.int32)
            cu = F.pad(lens.cumsum(0, dtype=torch.int32), (1, 0)).to(self.device)
            kv = self.infinity.text_norm(torch.cat(rows))
            sos = self.infinity.text_proj_for_sos((kv, cu, int(lens.max())))
            ca_kv = (self.infinity.text_proj_for_ca(kv), cu, int(lens.max()))
            self._ca_cache = {key: (sos, ca_kv)}  # one entry: chunk sizes repeat step after step
        return self._ca_cache[key]

    def forward(self, state, k, cond, cfg):
        inf = self.infinity
        n, g = len(state), (2 if cfg else 1)
        sos, ca_kv = self._text_inputs(cond, n, cfg)
        cond_BD = sos
        if k == 0:
            x = sos.unsqueeze(1).expand(g * n, 1, -1) + inf.pos_start.expand(g * n, 1, -1)
        else:
            x = inf.word_embed(inf.norm0_ve(state.next_input)).repeat(g, 1, 1)
        attns = [(b.sa if hasattr(b, "sa") else b.attn) for b in inf.unregistered_blocks]
        with _ModuleCaches(attns, state.kv, g) as caches:
            gss = inf.shared_ada_lin(cond_BD.float()).float().contiguous()
            only_first = bool(getattr(inf, "add_lvl_embeding_only_first_block", True))
            chunks = [c.module for c in inf.block_chunks] if hasattr(inf, "block_chunks") else [inf.blocks]
            rope = getattr(inf, "rope2d_freqs_grid", None)
            for j, blocks in enumerate(chunks):
                if j == 0 or not only_first:
                    x = inf.add_lvl_embeding(x, k, self.scale_schedule, need_to_pad=0)
                for m in blocks:
                    x = m(x=x, cond_BD=gss, ca_kv=ca_kv, attn_bias_or_two_vector=None, attn_fn=None,
                          scale_schedule=self.scale_schedule, rope2d_freqs_grid=rope, scale_ind=k)
            logits = inf.get_logits(x, cond_BD)
            kv = caches.collect()
        logits = logits.reshape(g * n, -1, 2)
        return logits[:n], (logits[n:] if cfg else None), kv

    def update(self, state, k, idx, kv):
        n = len(state)
        t, h, w = self.scale_schedule[k]
        bits = idx.reshape(n, h, w, -1)
        if self.patchify:
            bits = F.pixel_shuffle(bits.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
        codes = self.vae.quantizer.lfq.indices_to_codes(bits.unsqueeze(1), label_type="bit_label")
        mode = self.vae.quantizer.z_interplote_up
        last = k == self.num_scales - 1
        summed = state.f_hat + (codes if last else F.interpolate(codes, size=self.vae_schedule[-1], mode=mode))
        next_input = None
        if not last:
            nxt = F.interpolate(summed, size=self.vae_schedule[k + 1], mode=mode).squeeze(-3)
            if self.patchify:
                nxt = F.pixel_unshuffle(nxt, 2)
            next_input = nxt.reshape(n, nxt.shape[1], -1).permute(0, 2, 1)
        return VARState(k + 1, summed, next_input, kv, state.tokens + (idx,), dict(state.extra))

    def decode(self, state):
        return self.vae.decode(state.f_hat.squeeze(-3)).add(1).mul(0.5)
