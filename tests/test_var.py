"""Next-scale (VAR) models: the ``var`` Stepper on the bundled VAR digits model (determinism,
explicit noise, CFG-paired selection, NFE/token accounting), TTS-VAR (schedule mapping, budget,
clustering, resampling, replay), BestOfN on the same Stepper, and the FoundationVision VAR /
Infinity adapters when their code is importable (EVOSEARCH_VAR_REPO / EVOSEARCH_INFINITY_REPO
may point at a checkout)."""

import os
import sys

import numpy as np
import pytest
import torch

from evosearch import TTSVAR, BestOfN, FunctionReward, SearchPipeline
from evosearch.pipelines import stepper_for
from evosearch.core.noise import derive_seed
from evosearch.pipelines.var import VARState, VARStepper, filter_logits, sample_tokens
from evosearch.bundled.paths import asset_path
from evosearch.bundled.var_digits import VARDigitsPipeline
from evosearch.search.tts_var import DEFAULT_BATCH_SHAPE, kmeans_select, map_batch_shape

K = 6  # the bundled model's scales: 1, 2, 3, 4, 6, 8
TOKENS = 1 + 4 + 9 + 16 + 36 + 64


@pytest.fixture(scope="module")
def var_pipe():
    if not (asset_path("var_digits") / "model.safetensors").is_file():
        pytest.skip("bundled VAR digits weights missing: run scripts/train_var_digits.py")
    return VARDigitsPipeline.from_pretrained()


@pytest.fixture(scope="module")
def digit_reward():
    """A cheap reward for these tests: the judge's SVC margin for the requested digit."""
    from evosearch.bundled.digits import DigitJudge, parse_digit

    judge = DigitJudge()

    def score(images, prompts):
        d = judge.svc.decision_function(judge.to_features(images))
        return torch.as_tensor([d[i, parse_digit(p)] for i, p in enumerate(prompts)], dtype=torch.float32)

    return FunctionReward(score, name="svc_margin")


def run_states(stepper, seeds, end=None, start=None):
    s = stepper.start(seeds) if start is None else start
    for k in range(s.scale, stepper.num_steps if end is None else end):
        s = stepper.step(s, k, stepper.sample_noise([derive_seed(x, k) for x in seeds]))
    return s


# -- the Stepper ------------------------------------------------------------------------------
def test_dispatch_and_request_validation(var_pipe):
    st = stepper_for(var_pipe, max_batch_size=4)
    assert isinstance(st, VARStepper) and st.family == "var" and st.state_shape == (64,)
    req = st.prepare("digit 3", guidance_scale=2.0, top_k=10)
    assert st.num_steps == K and req.num_inference_steps == K
    assert req.extra == {"top_k": 10, "top_p": 0.0, "temperature": 1.0, "cfg_schedule": "constant"}
    with pytest.raises(ValueError, match="num_inference_steps: .* 6 scales"):
        st.prepare("3", num_inference_steps=5)
    for kw, name in [({"top_p": 1.5}, "top_p"), ({"top_k": -1}, "top_k"),
                     ({"temperature": float("nan")}, "temperature"),
                     ({"cfg_schedule": "cosine"}, "cfg_schedule"),
                     ({"guidance_scale": -1.0}, "guidance_scale"), ({"height": 32}, "height")]:
        with pytest.raises(ValueError, match=name):
            st.prepare("3", **kw)
    with pytest.raises(ValueError, match="prompt"):
        st.prepare("a cat")
    st.prepare("3")
    with pytest.raises(ValueError, match="scale 0"):
        st.step(st.start([0]), 1, None)
    with pytest.raises(NotImplementedError, match="TTSVAR"):
        st.predict(st.start([0]), 0)


def test_sampler_inverse_cdf_topk_topp():
    logits = torch.log(torch.tensor([[0.2, 0.3, 0.5]]))
    u = torch.tensor([[0.1], [0.25], [0.6], [0.999]]).reshape(4, 1)
    idx = sample_tokens(logits.expand(4, 3).reshape(4, 1, 3), u)
    assert idx.reshape(-1).tolist() == [0, 1, 2, 2]
    assert sample_tokens(logits[None], None).item() == 2  # no noise: greedy
    assert sample_tokens(logits[None], torch.tensor([[0.0]]), top_k=1).item() == 2
    # top-k 2 keeps 0.3, 0.5 -> renormalised 0.375 / 0.625
    assert sample_tokens(logits[None], torch.tensor([[0.3]]), top_k=2).item() == 1
    assert sample_tokens(logits[None], torch.tensor([[0.4]]), top_k=2).item() == 2
    # top-p (VAR convention: drop the ascending tail whose cumulative mass is <= 1 - top_p)
    assert torch.isfinite(filter_logits(logits, top_p=0.6)).tolist() == [[False, True, True]]
    assert torch.isfinite(filter_logits(logits, top_p=0.4)).tolist() == [[False, False, True]]
    # the sampler draws the distribution: frequencies of 20000 draws within 2%, with temperature too
    uu = torch.rand(1, 20000, generator=torch.Generator().manual_seed(0))
    draws = sample_tokens(logits.expand(20000, 3)[None], uu).reshape(-1)
    assert torch.allclose(torch.bincount(draws, minlength=3).float() / 20000, torch.tensor([0.2, 0.3, 0.5]), atol=0.02)
    draws = sample_tokens(logits.expand(20000, 3)[None], uu, temperature=2.0).reshape(-1)
    expect = torch.tensor([0.2, 0.3, 0.5]).sqrt() / torch.tensor([0.2, 0.3, 0.5]).sqrt().sum()
    assert torch.allclose(torch.bincount(draws, minlength=3).float() / 20000, expect, atol=0.02)


def test_determinism_and_per_row_noise(var_pipe):
    st = stepper_for(var_pipe, max_batch_size=2)  # chunks of 2 samples: micro-batching is invisible
    st.prepare("7", guidance_scale=2.0)
    a = run_states(st, [5, 6, 7])
    b = run_states(st, [5, 6, 7])
    alone = run_states(st, [6])
    for k in range(K):
        assert torch.equal(a.tokens[k], b.tokens[k])
        assert torch.equal(a.tokens[k][1:2], alone.tokens[k])  # a row's sample does not depend on its batch
    assert a.scale == K and len(a) == 3 and a.next_input is None
    assert [t.shape[1] for t in a.tokens] == [1, 4, 9, 16, 36, 64]
    assert torch.equal(st.finish(a), st.finish(b))
    assert torch.allclose(st.finish(a)[1:2], st.finish(alone), atol=1e-6)
    # plain pipeline call: reproducible with a generator, images in [0, 1]
    img1 = var_pipe("3", num_images_per_prompt=2, generator=torch.Generator().manual_seed(1), output_type="pt").images
    img2 = var_pipe("3", num_images_per_prompt=2, generator=torch.Generator().manual_seed(1), output_type="pt").images
    assert img1.shape == (2, 1, 16, 16) and torch.equal(img1, img2) and 0 <= img1.min() and img1.max() <= 1
    assert len(var_pipe(["1", "2"], output_type="pil").images) == 2


def test_explicit_noise_is_respected(var_pipe):
    st = stepper_for(var_pipe, max_batch_size=8)
    st.prepare("2")
    s0 = st.start([0, 1])
    noise = st.sample_noise([11, 12])
    assert noise.shape == (2, 64) and noise.dtype == torch.float32 and 0 <= noise.min() and noise.max() < 1
    s1 = run_states(st, [0, 1], end=3)
    x = st.step(s1, 3, noise)
    assert torch.equal(st.step(s1, 3, noise).tokens[3], x.tokens[3])
    # the step uses only the first draws_at(3) = 16 columns; changing the rest changes nothing
    other = noise.clone()
    other[:, 16:] = 0.5
    assert torch.equal(st.step(s1, 3, other).tokens[3], x.tokens[3])
    # changing row 0's uniforms changes row 0 only
    other = noise.clone()
    other[0, :16] = 1 - other[0, :16]
    y = st.step(s1, 3, other)
    assert not torch.equal(y.tokens[3][0], x.tokens[3][0]) and torch.equal(y.tokens[3][1], x.tokens[3][1])
    # all-zero uniforms pick each position's first token with positive probability; None is greedy
    assert torch.equal(st.step(s0, 0, torch.zeros(2, 64)).tokens[0], st.step(s0, 0, torch.zeros(2, 64)).tokens[0])
    st.prepare("2", top_k=1)
    assert st.noise_scale(0) == 0.0
    greedy = st.step(s1, 3, None)
    assert torch.equal(st.step(s1, 3, noise).tokens[3], greedy.tokens[3])
    with pytest.raises(ValueError, match="noise"):
        st.step(s1, 3, torch.rand(2, 8))


def test_select_keeps_cfg_rows_paired(var_pipe):
    st = stepper_for(var_pipe, max_batch_size=3)
    st.prepare("4", guidance_scale=3.0)
    seeds = [21, 22, 23, 24]
    s = run_states(st, seeds, end=3)
    assert s.cfg_rows == 2 and len(s.kv) == 2 * 4  # (k, v) per layer, each (N, cond/uncond, heads, L, dim)
    assert s.kv[0].shape[:2] == (4, 2) and s.kv[0].shape[3] == 1 + 4 + 9
    idx = [2, 0, 2]
    sel = st.select(s, idx)
    for t_sel, t in zip(sel.kv, s.kv):
        assert torch.equal(t_sel, t[idx])  # both halves of each pair moved together
    assert torch.equal(sel.f_hat, s.f_hat[idx]) and torch.equal(sel.next_input, s.next_input[idx])
    assert all(torch.equal(a, b[idx]) for a, b in zip(sel.tokens, s.tokens))
    # continuing the selected rows equals continuing the originals with the same noise rows
    rows = [seeds[j] for j in idx]
    cont_sel = run_states(st, rows, start=sel)
    cont_one = run_states(st, [seeds[2]], start=s[2:3])
    assert torch.equal(cont_sel.tokens[-1][0], cont_one.tokens[-1][0])
    assert torch.equal(cont_sel.tokens[-1][0], cont_sel.tokens[-1][2])
    # the pairing matters: swapping sample 0's unconditional cache for sample 1's changes its unconditional
    # logits and leaves its conditional ones alone
    broken = VARState(s.scale, s.f_hat, s.next_input,
                      tuple(torch.stack([t[:, 0], t[[1, 0, 2, 3], 1]], 1) for t in s.kv), s.tokens)
    cond = st.adapter.encode("4")
    lc, lu, _ = st.adapter.forward(s, 3, cond, True)
    bc, bu, _ = st.adapter.forward(broken, 3, cond, True)
    assert torch.allclose(bc, lc) and not torch.allclose(bu[0], lu[0], atol=1e-3)
    # concatenation, slicing, CPU archive of a state
    both = st.concat([s[0:2], s[2:4]])
    assert all(torch.equal(a, b) for a, b in zip(both.kv, s.kv)) and len(both) == 4
    assert len(s.cpu().detach()) == 4 and s[[1]].f_hat.shape[0] == 1
    with pytest.raises(TypeError):
        s[0]
    with pytest.raises(IndexError):
        s.select([4])
    with pytest.raises(ValueError, match="same scale"):
        VARState.cat([s, run_states(st, seeds[:1], end=2)])
    # guidance 1 runs conditional rows only
    st.prepare("4", guidance_scale=1.0)
    assert run_states(st, [1], end=2).cfg_rows == 1


def test_nfe_and_token_accounting(var_pipe, digit_reward):
    st = stepper_for(var_pipe, max_batch_size=4)
    st.prepare("5", guidance_scale=2.0)
    nfe0, tok0, dec0 = st.nfe, st.tokens, st.decode_calls
    s = run_states(st, [1, 2, 3, 4, 5])
    assert st.nfe - nfe0 == 5 * K  # one NFE per sample per scale, with CFG one batched pass
    assert st.tokens - tok0 == 5 * TOKENS
    st.preview(run_states(st, [1], end=2), 1)
    assert st.nfe - nfe0 == 5 * K + 2 and st.decode_calls - dec0 == 1  # previews cost a decode, no NFE
    assert st.finish(s).shape == (5, 3, 16, 16)
    out = SearchPipeline.from_pipe(var_pipe, reward=digit_reward, method=BestOfN(n=3), max_batch_size=2)(
        "5", seed=0, output_type="pt", progress=False)
    assert out.stats.nfe == 3 * K and out.stats.tokens == 3 * TOKENS and out.stats.to_dict()["tokens"] == 3 * TOKENS
    assert out.settings["family"] == "var"


# -- TTS-VAR: schedule and budget ---------------------------------------------------------------
def test_tts_var_schedule_mapping():
    assert map_batch_shape(DEFAULT_BATCH_SHAPE, 13) == list(DEFAULT_BATCH_SHAPE)
    assert map_batch_shape(DEFAULT_BATCH_SHAPE, 6) == [8, 6, 4, 2, 1, 1]
    assert map_batch_shape(DEFAULT_BATCH_SHAPE, 10) == [8, 8, 6, 6, 4, 2, 2, 1, 1, 1]
    assert map_batch_shape(DEFAULT_BATCH_SHAPE, 4) == [8, 6, 2, 1]
    p = TTSVAR(n=2).plan(None, 13)  # the authors' setting on Infinity's 13 scales
    assert p["cluster_scales"] == [2, 5] and p["resample_scales"] == [6, 9]
    assert p["forward_sizes"] == [16, 16, 16, 12, 12, 12, 8, 4, 4, 4, 2, 2, 2] and p["nfe"] == 55 * 2
    p = TTSVAR(n=1).plan(None, K)
    assert p["batch_sizes"] == [8, 6, 4, 2, 1, 1] and p["forward_sizes"] == [8, 8, 6, 4, 2, 1] and p["nfe"] == 29
    assert p["cluster_scales"] == [1, 2] and p["resample_scales"] == [3, 4]
    p = TTSVAR(n=1).plan(None, 4)
    assert p["cluster_scales"] == [1] and p["resample_scales"] == [2] and p["nfe"] == 24  # last drop: best final
    p = TTSVAR(n=1, batch_shape=[4, 4, 2, 2, 2, 1], cluster_scales=[2], resample_scales=[1, 4]).plan(None, K)
    assert p["cluster_scales"] == [2] and p["resample_scales"] == [1, 4]


def test_tts_var_never_exceeds_budget():
    m = TTSVAR()
    for budget in range(29, 600, 7):
        p = m.plan(budget, K)
        assert p["nfe"] <= budget < p["nfe"] + 29 and m.cost(budget, K) == p["nfe"]
        assert p["n"] == budget // 29
    for T in (4, 6, 10, 13):
        unit = TTSVAR(n=1).plan(None, T)["nfe"]
        for budget in (unit, 3 * unit - 1, 10 * unit + 5):
            assert m.plan(budget, T)["nfe"] <= budget
    with pytest.raises(ValueError, match="nfe_budget: TTS-VAR at N=1 on 6 scales needs 29"):
        m.plan(28, K)
    with pytest.raises(ValueError, match="nfe_budget: TTSVAR\\(n=4\\)"):
        TTSVAR(n=4).plan(100, K)
    with pytest.raises(ValueError, match="needs an nfe_budget"):
        m.plan(None, K)
    for kw, name in [({"n": 0}, "n"), ({"batch_shape": [2, 4]}, "batch_shape"), ({"potential": "exp"}, "potential"),
                     ({"lambda_": -1.0}, "lambda_"), ({"resampling": "residual"}, "resampling"),
                     ({"features": "dino"}, "features"), ({"cluster_scales": [1], "resample_scales": [1]}, "both"),
                     ({"coarse_fraction": 2.0}, "coarse_fraction")]:
        with pytest.raises(ValueError, match=name):
            TTSVAR(**kw)
    with pytest.raises(ValueError, match="each drop needs a selection"):
        TTSVAR(n=1, cluster_scales=[1], resample_scales=[3]).plan(None, K)
    with pytest.raises(ValueError, match="does not drop"):
        TTSVAR(n=1, batch_shape=[4, 4, 4, 2, 1, 1], cluster_scales=[1, 3], resample_scales=[4]).plan(None, K)


def test_kmeans_select_distinct_and_nearest():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    X = np.concatenate([c + rng.normal(0, 0.1, (4, 2)) for c in centres])
    idx = kmeans_select(X, 3, random_state=0)
    assert len(set(idx.tolist())) == 3 and sorted({int(j) // 4 for j in idx}) == [0, 1, 2]
    assert kmeans_select(X, 3, random_state=0).tolist() == idx.tolist()  # deterministic
    dup = np.zeros((6, 3))
    dup[:2] = 1.0  # two distinct points, four clusters asked
    idx = kmeans_select(dup, 4, random_state=1)
    assert len(set(idx.tolist())) == 4 and len(kmeans_select(dup, 6, random_state=1)) == 6


# -- TTS-VAR and BestOfN end to end ------------------------------------------------------------
def test_tts_var_end_to_end_and_replay(var_pipe, digit_reward):
    search = SearchPipeline.from_pipe(var_pipe, reward=digit_reward, method=TTSVAR(), max_batch_size=8)
    budget = 2 * 29 + 5
    out = search("3", seed=1, nfe_budget=budget, output_type="pt", progress=False)
    s = out.stats
    assert out.complete and s.nfe == 58 <= budget and s.tokens < 10 * TOKENS  # fewer tokens than best-of-10
    plan = out.settings["plan"]
    assert plan["n"] == 2 and plan["batch_sizes"] == [16, 12, 8, 4, 2, 2]
    sel = [h for h in out.history if h.get("selection")]
    assert [(h["step"], h["selection"], h["population"]) for h in sel] == [
        (1, "cluster", 16), (2, "cluster", 12), (3, "resample", 8), (4, "resample", 4)]
    assert len(set(sel[0]["kept"])) == 12 and len(sel[2]["ancestors"]) == 4
    assert s.reward_calls == 8 + 4 + 2 and s.decode_calls == 16 + 12 + 8 + 4 + 2
    final = out.history[-1]
    assert final["population"] == 2 and out.best.reward == max(final["rewards"])
    kinds = [e.kind for e in out.best.lineage.events]
    assert kinds == ["init", "keep", "keep"] and [e.step for e in out.best.lineage.events] == [0, 4, 5]
    # the winner re-generated alone from its lineage
    again = search.replay(out.best.lineage, output_type="pt")
    assert torch.equal((again * 255).round().to(torch.uint8), (out.best.image * 255).round().to(torch.uint8))
    # the same request searched again gives the same winner
    out2 = search("3", seed=1, nfe_budget=budget, output_type="pt", progress=False)
    assert out2.best.reward == out.best.reward and out2.best.lineage == out.best.lineage
    # other potentials and the reward feature hook run too
    for pot in ("diff", "max", "sum"):
        o = search("3", seed=2, method=TTSVAR(n=1, potential=pot), output_type="pt", progress=False)
        assert o.stats.nfe == 29
    feats = FunctionReward(digit_reward.fn, name="with_features")
    feats.features = lambda images, prompts: images.mean(dim=1).reshape(len(images), -1)[:, ::4]
    o = SearchPipeline.from_pipe(var_pipe, reward=feats, method=TTSVAR(n=1, features="reward"))(
        "3", seed=3, output_type="pt", progress=False)
    assert o.stats.nfe == 29
    with pytest.raises(ValueError, match="features"):
        SearchPipeline.from_pipe(var_pipe, reward=digit_reward, method=TTSVAR(n=1, features="reward"))(
            "3", seed=3, progress=False)


def test_best_of_n_on_var_and_equal_compute(var_pipe, digit_reward):
    search = SearchPipeline.from_pipe(var_pipe, reward=digit_reward, method=BestOfN(), max_batch_size=8)
    out = search("8", seed=0, nfe_budget=58, output_type="pt", progress=False)
    assert out.stats.nfe == 9 * K <= 58 and len(out.images) == 9
    assert out.best.reward == max(out.rewards)
    again = search.replay(out.best.lineage, output_type="pt")
    assert torch.equal((again * 255).round().to(torch.uint8), (out.best.image * 255).round().to(torch.uint8))


def test_tts_var_needs_a_var_stepper(pixel_pipe, brightness):
    with pytest.raises(ValueError, match="next-scale"):
        SearchPipeline.from_pipe(pixel_pipe, reward=brightness, method=TTSVAR(n=1))(
            "", seed=0, num_inference_steps=6, progress=False)


def test_latent_space_methods_fail_clearly_on_var(var_pipe, digit_reward):
    from evosearch import EvoSearch, ParticleSearch, PathSearch, ZeroOrderSearch

    for method in (EvoSearch(), ZeroOrderSearch(), PathSearch(), ParticleSearch()):
        with pytest.raises((AttributeError, TypeError, NotImplementedError), match="TTSVAR"):
            SearchPipeline.from_pipe(var_pipe, reward=digit_reward, method=method)(
                "3", seed=0, nfe_budget=600, progress=False)


def test_cli_knows_tts_var():
    from evosearch.registry import METHODS, build_method
    METHOD_CHOICES = tuple(METHODS)

    assert "tts-var" in METHOD_CHOICES and METHODS["tts-var"] is TTSVAR
    assert isinstance(build_method("tts-var", 2), TTSVAR) and build_method("tts-var", 2).n == 2


# -- external models (run only when their code is importable) -----------------------------------
def _import_external(env: str, module: str):
    path = os.environ.get(env)
    if path and path not in sys.path:
        sys.path.insert(0, path)
    return pytest.importorskip(module)


def test_foundation_var_adapter_matches_its_sampler():
    var_mod = _import_external("EVOSEARCH_VAR_REPO", "models.var")
    vqvae_mod = pytest.importorskip("models.vqvae")
    if not hasattr(var_mod, "VAR") or not hasattr(var_mod.VAR, "autoregressive_infer_cfg"):
        pytest.skip("models.var is not FoundationVision's VAR")
    from evosearch.pipelines.var import FoundationVARAdapter, VARPipeline

    torch.manual_seed(0)
    pn = (1, 2, 3, 4)
    vae = vqvae_mod.VQVAE(vocab_size=64, z_channels=8, ch=32, test_mode=True, share_quant_resi=4, v_patch_nums=pn)
    var = var_mod.VAR(vae_local=vae, num_classes=10, depth=2, embed_dim=64, num_heads=2, patch_nums=pn,
                      flash_if_available=False, fused_if_available=False, attn_l2_norm=True)
    var.init_weights(init_adaln=0.5, init_adaln_gamma=1e-5, init_head=0.02, init_std=-1)
    with torch.no_grad():
        var.head.weight.mul_(50)  # make the random logits decisive
    var.eval()
    ref = var.autoregressive_infer_cfg(B=3, label_B=4, cfg=1.5, top_k=1, top_p=0.0)  # greedy: deterministic
    st = stepper_for(VARPipeline(FoundationVARAdapter(var)), max_batch_size=2)
    st.prepare("4", guidance_scale=2.5, top_k=1)  # cfg=1.5 == g=2.5 on VAR's linear ramp (the default)
    s = st.start([0, 1, 2])
    for k in range(st.num_steps):
        s = st.step(s, k, None)
    assert torch.allclose(st.finish(s), ref, atol=1e-4)
    assert s.cfg_rows == 2 and s.kv[0].shape[:2] == (3, 2)
    # stochastic: selecting rows then continuing equals continuing the chosen row alone
    st.prepare("4", top_k=0, top_p=0.0)
    seeds = [5, 6, 7]
    mid = run_states(st, seeds, end=2)
    a = run_states(st, [seeds[1], seeds[1]], start=st.select(mid, [1, 1]))
    b = run_states(st, [seeds[1]], start=mid[1:2])
    assert torch.equal(a.tokens[-1][0], b.tokens[-1][0]) and torch.equal(a.tokens[-1][1], b.tokens[-1][0])


def test_infinity_adapter_importable_only():
    _import_external("EVOSEARCH_INFINITY_REPO", "infinity.models.infinity")
    pytest.importorskip("flash_attn")  # Infinity's attention needs flash-attn (CUDA)
    from evosearch.pipelines.var import InfinityAdapter

    assert InfinityAdapter.default_guidance_scale == 3.0  # the model itself is too large to build in a unit test
