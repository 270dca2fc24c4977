"""Video: Steppers on tiny offline Wan, CogVideoX, LTX and HunyuanVideo pipelines; segment models and
Tree-of-Frames; video rewards; export_video."""

import importlib.util

import numpy as np
import pytest
import torch

from evosearch import BestOfN, EvoSearch, FunctionReward, SearchPipeline, TreeOfFrames, export_video, testing
from evosearch.bundled.paths import asset_path
from evosearch.pipelines import stepper_for
from evosearch.pipelines.segments import SegmentStepper, WanI2VSegments
from evosearch.pipelines.video import CogVideoXStepper, HunyuanVideoStepper, LTXStepper, WanStepper
from evosearch.rewards import Ensemble, FrameReward, TemporalConsistency
from evosearch.search.context import BudgetExceeded

FACTORIES = {
    "wan": (testing.tiny_wan, WanStepper, 5.0),
    "cogvideox": (testing.tiny_cogvideox, CogVideoXStepper, 6.0),
    "ltx": (testing.tiny_ltx, LTXStepper, 3.0),
    "hunyuan": (testing.tiny_hunyuan_video, HunyuanVideoStepper, 6.0),
}
STEPS = 3
PROMPT = "a cat walks"


@pytest.fixture(scope="module", params=list(FACTORIES))
def family(request):
    factory, cls, guidance = FACTORIES[request.param]
    return request.param, factory(seed=0), cls, guidance


def contrast(images, prompts):  # an image reward: on videos it is averaged over frames
    return images.std(dim=(1, 2, 3))


def prepared(pipe, guidance, max_batch_size=8, eta=1.0, **extra):
    stepper = stepper_for(pipe, max_batch_size=max_batch_size, eta=eta)
    stepper.prepare(PROMPT, num_inference_steps=STEPS, guidance_scale=guidance, **extra)
    return stepper


# ---------------------------------------------------------------------------- video Steppers


def test_family_layout_and_videos(family):
    name, pipe, cls, guidance = family
    stepper = prepared(pipe, guidance)
    assert isinstance(stepper, cls) and stepper.family == "video"
    x = stepper.start([1, 2])
    assert x.shape == (2, *stepper.state_shape)
    assert x.ndim == (3 if name == "ltx" else 5)  # LTX: packed tokens; others (C or F, F or C, h, w)
    videos = stepper.finish(x)
    h, w, f = pipe.default_height, pipe.default_width, pipe.default_num_frames
    assert videos.shape == (2, f, 3, h, w) and videos.dtype == torch.float32
    assert videos.min() >= 0 and videos.max() <= 1
    assert all(stepper.noise_scale(i) > 0 for i in range(STEPS - 1))


def test_deterministic_step_reproduces_the_pipeline(family):
    """eta = 0 is the pipeline's own sampler: same initial latents, same video."""
    name, pipe, cls, guidance = family
    stepper = prepared(pipe, guidance, eta=0.0)
    x = stepper.start([3])
    latents = x.clone()
    for i in range(STEPS):
        x = stepper.step(x, i, None)
    ours = stepper.finish(x)
    kwargs = dict(prompt=PROMPT, num_inference_steps=STEPS, guidance_scale=guidance, height=pipe.default_height,
                  width=pipe.default_width, num_frames=pipe.default_num_frames, output_type="pt", latents=latents)
    if name in ("wan", "cogvideox"):
        kwargs["negative_prompt"] = ""
    if name == "cogvideox":
        kwargs["max_sequence_length"] = pipe.transformer.config.max_text_seq_length
    reference = pipe(**kwargs).frames
    torch.testing.assert_close(ours, reference, atol=2e-3, rtol=0)


def test_explicit_noise_is_respected(family):
    name, pipe, cls, guidance = family
    stepper = prepared(pipe, guidance)
    x = stepper.start([7, 8])
    z1, z2 = stepper.sample_noise([1, 2]), stepper.sample_noise([3, 4])
    a, b, c = stepper.step(x, 0, z1), stepper.step(x, 0, z1), stepper.step(x, 0, z2)
    assert torch.equal(a, b)
    assert all((a[k] - c[k]).abs().max() > 0 for k in range(2))
    with pytest.raises(ValueError, match="noise"):
        stepper.step(x, 0, None)
    assert torch.equal(stepper.sample_noise([5, 9])[1], stepper.sample_noise([9])[0])


def test_nfe_counted_exactly(family):
    name, pipe, cls, guidance = family
    stepper = prepared(pipe, guidance, max_batch_size=2)
    x = stepper.start([1, 2, 3])
    n0 = stepper.nfe
    for i in range(STEPS):
        x = stepper.step(x, i, stepper.sample_noise([10 + i, 20 + i, 30 + i]) if stepper.noise_scale(i) else None)
    assert stepper.nfe - n0 == 3 * STEPS
    calls = []
    hook = stepper.denoiser.register_forward_hook(lambda m, i, o: calls.append(1))
    try:
        out = SearchPipeline.from_pipe(pipe, reward=contrast, method=BestOfN(n=3), max_batch_size=2)(
            PROMPT, seed=0, num_inference_steps=STEPS, guidance_scale=guidance, progress=False)
    finally:
        hook.remove()
    assert out.stats.nfe == 3 * STEPS and out.stats.decode_calls == 3
    assert len(calls) == 2 * STEPS  # micro-batches of 2 and 1 rows, one (CFG-batched) call each


def test_micro_batch_invariance(family):
    name, pipe, cls, guidance = family
    outs = []
    for mb in (1, 3):
        stepper = prepared(pipe, guidance, max_batch_size=mb)
        x = stepper.start([1, 2, 3])
        for i in range(STEPS):
            x = stepper.step(x, i, stepper.sample_noise([i * 10 + k for k in range(3)]))
        outs.append((x, stepper.finish(x)))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(outs[1][1], outs[0][1], rtol=1e-4, atol=1e-4)


def test_search_outputs_videos_and_replays(family):
    name, pipe, cls, guidance = family
    search = SearchPipeline.from_pipe(pipe, reward=FunctionReward(contrast),
                                      method=EvoSearch(evolution_schedule=[0, 2], population_schedule=[2, 2, 2],
                                                       elite_size=1), max_batch_size=4)
    kw = dict(seed=11, num_inference_steps=STEPS, guidance_scale=guidance, output_type="pt", progress=False)
    a, b = search(PROMPT, **kw), search(PROMPT, **kw)
    assert a.rewards == b.rewards and torch.equal(a.videos, b.videos)
    assert a.stats.nfe == 2 * STEPS + 2 * STEPS + 2 * (STEPS - 2)
    f = pipe.default_num_frames
    assert a.videos.shape[1:] == (f, 3, pipe.default_height, pipe.default_width)
    assert torch.equal(a.images, a.videos[:, 0])  # images: the first frames
    replayed = search.replay(a.best.lineage, output_type="pt")
    assert replayed.shape == a.best.video.shape
    assert (replayed - a.best.video).abs().max() <= 1 / 255 + 1e-6
    pil = search(PROMPT, **{**kw, "output_type": "pil", "num_frames": 5})
    assert len(pil.videos) == len(pil.rewards) and len(pil.best.video) >= 5
    assert pil.best.image.size == (pipe.default_width, pipe.default_height)


def test_bad_video_sizes_are_named():
    pipe = testing.tiny_wan(seed=0)
    stepper = stepper_for(pipe)
    with pytest.raises(ValueError, match="num_frames"):
        stepper.prepare(PROMPT, num_inference_steps=2, num_frames=8)
    with pytest.raises(ValueError, match="height/width"):
        stepper.prepare(PROMPT, num_inference_steps=2, height=40, width=32)


# ---------------------------------------------------------------------------- segments + Tree-of-Frames


@pytest.fixture(scope="module")
def digits_pipe():
    """A moving-digits pipeline with random weights (independent of the bundled assets)."""
    from evosearch.bundled.moving_digits import MovingDigitsPipeline, make_scheduler, make_unet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = make_unet().eval()
    pipe = MovingDigitsPipeline(unet=unet, scheduler=make_scheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def brightness(videos, prompts):
    return videos.mean(dim=(1, 2, 3))


SEG_STEPS = 4


def test_segment_stepper_chain(digits_pipe):
    stepper = stepper_for(digits_pipe, max_batch_size=2)
    assert isinstance(stepper, SegmentStepper)
    stepper.prepare("3", num_inference_steps=SEG_STEPS, num_segments=3)
    assert stepper.num_steps == 3 * SEG_STEPS and stepper.state_shape == (3, 4, 16, 16)
    x = stepper.start([1, 2, 3])
    x0 = x.clone()
    n0 = stepper.nfe
    for i in range(SEG_STEPS):  # the first segment only changes segment 0
        x = stepper.step(x, i, stepper.sample_noise([i, i + 1, i + 2]))
    assert stepper.nfe - n0 == 3 * SEG_STEPS
    assert torch.equal(x[:, 1:], x0[:, 1:]) and not torch.equal(x[:, 0], x0[:, 0])
    assert stepper.finish(x).shape == (3, 12, 3, 16, 16)
    assert stepper.finish_prefix(x, 1).shape == (3, 4, 3, 16, 16)


def test_tree_of_frames_plan_and_nfe(digits_pipe):
    tof = TreeOfFrames(roots=5, branch_factors=[3, 2], prune_at=[0, 1])
    plan = tof.plan(None, 3 * SEG_STEPS, 3)
    # depth 0: 5 roots -> keep 3 (>= median); depth 1: 9 -> keep 5; depth 2: 10 leaves
    assert plan.nodes == [5, 9, 10] and plan.kept == [3, 5, 10]
    assert plan.nfe == SEG_STEPS * 24 and plan.reward_calls == 5 + 9 + 10
    assert TreeOfFrames(roots=4, branch_factors=2, keep=1).plan(None, 3 * SEG_STEPS, 3).nodes == [4, 2, 2]
    assert TreeOfFrames(roots=4, branch_factors=2, prune_at=[]).plan(None, 3 * SEG_STEPS, 3).nodes == [4, 8, 16]
    sized = TreeOfFrames(roots=None, branch_factors=2).plan(100, 3 * SEG_STEPS, 3)
    assert sized.nfe <= 100 and TreeOfFrames(roots=sized.roots + 1, branch_factors=2).cost(None, 12, 3) > 100
    with pytest.raises(ValueError, match="nfe_budget"):
        tof.plan(SEG_STEPS * 24 - 1, 3 * SEG_STEPS, 3)
    with pytest.raises(ValueError, match="branch_factors"):
        TreeOfFrames(branch_factors=[2]).plan(None, 12, 3)
    with pytest.raises(ValueError, match="prune_at"):
        TreeOfFrames(prune_at=[2]).plan(None, 12, 3)

    search = SearchPipeline.from_pipe(digits_pipe, reward=brightness, method=tof, max_batch_size=4)
    out = search("3", seed=0, num_inference_steps=SEG_STEPS, num_segments=3, nfe_budget=plan.nfe, output_type="pt",
                 progress=False)
    assert out.stats.nfe == plan.nfe <= out.stats.nfe_budget
    assert out.stats.reward_calls == plan.reward_calls and out.stats.decode_calls == plan.reward_calls
    assert out.settings["plan"]["nodes"] == plan.nodes
    leaves = [h for h in out.history if not h.get("preview")]
    assert len(leaves) == 1 and leaves[0]["population"] == 10
    # the best complete leaf wins; pruning scores (partial videos) never do
    assert out.best.reward == max(leaves[0]["rewards"]) == out.rewards[0]
    assert out.videos.shape == (10, 12, 3, 16, 16)
    previews = [h for h in out.history if h.get("preview")]
    assert [h["population"] for h in previews] == [5, 9]
    with pytest.raises(ValueError, match="nfe_budget"):
        search("3", seed=0, num_inference_steps=SEG_STEPS, num_segments=3, nfe_budget=plan.nfe - 1, progress=False)


def test_tree_of_frames_replay_and_linear_equivalence(digits_pipe):
    search = SearchPipeline.from_pipe(digits_pipe, reward=brightness, method=TreeOfFrames(roots=3, branch_factors=2),
                                      max_batch_size=3)
    kw = dict(seed=5, num_inference_steps=SEG_STEPS, num_segments=3, output_type="pt", progress=False)
    a, b = search("7", **kw), search("7", **kw)
    assert a.rewards == b.rewards and torch.equal(a.videos, b.videos)
    kinds = [e.kind for e in a.best.lineage.events]
    assert kinds == ["init", "segment", "segment"]
    replayed = search.replay(a.best.lineage, output_type="pt")
    assert (replayed - a.best.video).abs().max() <= 1 / 255 + 1e-6
    # branch factor 1 and no pruning: exactly best-of-roots on the same seeds
    linear = search("7", **kw, method=TreeOfFrames(roots=4, branch_factors=1, prune_at=[]))
    bon = search("7", **kw, method=BestOfN(n=4))
    assert linear.rewards == bon.rewards and linear.stats.nfe == bon.stats.nfe == 4 * 3 * SEG_STEPS


def test_tree_of_frames_never_overspends(digits_pipe):
    from evosearch.search import SearchRun

    search = SearchPipeline.from_pipe(digits_pipe, reward=FunctionReward(brightness), method=TreeOfFrames(roots=3))
    with pytest.raises(ValueError, match="nfe_budget"):  # refused before any compute
        search("1", num_inference_steps=SEG_STEPS, num_segments=2, nfe_budget=10, progress=False)
    assert search.stepper.nfe == 0
    run = SearchRun(search.stepper, FunctionReward(brightness), "1", seed=0, nfe_budget=10, progress=False)
    with pytest.raises(BudgetExceeded):  # and the engine refuses any overspending
        run.rollout(run.initial(3), end=SEG_STEPS)
    assert run.nfe == 0
    with pytest.raises(ValueError, match="segment"):
        SearchPipeline.from_pipe(testing.tiny_cogvideox(0), reward=contrast, method=TreeOfFrames())(
            PROMPT, num_inference_steps=2, progress=False)


def test_wan_image_to_video_segments():
    """Tree-of-Frames on diffusers' WanImageToVideoPipeline, the first segment from a WanPipeline."""
    i2v, t2v = testing.tiny_wan_i2v(seed=0), testing.tiny_wan(seed=0)
    stepper = SegmentStepper(WanI2VSegments(i2v, first=t2v), max_batch_size=4)
    stepper.prepare(PROMPT, num_inference_steps=2, guidance_scale=5.0, num_segments=2, num_frames=5)
    assert stepper.state_shape == (2, 16, 2, 4, 4)
    search = SearchPipeline(i2v, reward=contrast, method=TreeOfFrames(roots=2, branch_factors=2), max_batch_size=4)
    search.stepper = stepper
    kw = dict(seed=1, num_inference_steps=2, guidance_scale=5.0, num_segments=2, num_frames=5, output_type="pt",
              progress=False)
    out = search(PROMPT, **kw)
    assert out.stats.nfe == 2 * (2 + 2)  # 2 roots, 1 kept, 2 children; 2 steps per segment
    assert out.videos.shape == (2, 5 + 4, 3, 32, 32)  # the continuation drops its repeated condition frame
    assert out.stats.decode_calls == 2 + 1 + 2  # pruning previews, the kept root's context, the leaves
    replayed = search.replay(out.best.lineage, output_type="pt")
    assert (replayed - out.best.video).abs().max() <= 1 / 255 + 1e-6
    # image-to-video from an image, without a text-to-video first segment
    from PIL import Image

    alone = SegmentStepper(WanI2VSegments(i2v), max_batch_size=4)
    with pytest.raises(ValueError, match="image"):
        alone.prepare(PROMPT, num_inference_steps=2, num_segments=2, num_frames=5)
    alone.prepare(PROMPT, num_inference_steps=2, guidance_scale=1.0, num_segments=2, num_frames=5,
                  image=Image.new("RGB", (32, 32), (200, 30, 30)))
    x = alone.start([0])
    for i in range(alone.num_steps):
        x = alone.step(x, i, alone.sample_noise([i]) if alone.noise_scale(i) else None)
    assert alone.finish(x).shape == (1, 9, 3, 32, 32)


# ---------------------------------------------------------------------------- video rewards


def test_frame_reward_aggregates():
    videos = torch.zeros(2, 5, 3, 4, 4)
    for f in range(5):
        videos[0, f] = f / 10
        videos[1, f] = 0.5 - f / 10
    mean_px = FunctionReward(lambda im, p: im.mean(dim=(1, 2, 3)), name="mean_px")
    torch.testing.assert_close(mean_px(videos), torch.tensor([0.2, 0.3]))  # any image reward: frame mean
    torch.testing.assert_close(FrameReward(mean_px, "min")(videos), torch.tensor([0.0, 0.1]))
    torch.testing.assert_close(FrameReward(mean_px, "max")(videos), torch.tensor([0.4, 0.5]))
    torch.testing.assert_close(FrameReward(mean_px, "median")(videos), torch.tensor([0.2, 0.3]))
    torch.testing.assert_close(FrameReward(mean_px, "last")(videos), torch.tensor([0.4, 0.1]))
    torch.testing.assert_close(FrameReward(mean_px, frames=2)(videos), torch.tensor([0.2, 0.3]))  # frames 0, 4
    torch.testing.assert_close(FrameReward(mean_px, frames=[1])(videos), torch.tensor([0.1, 0.4]))
    from PIL import Image

    frame_lists = [[Image.new("L", (4, 4), int(255 * f / 10)) for f in range(5)]]
    assert abs(float(mean_px(frame_lists)[0]) - 0.2) < 0.01  # lists of PIL frames are videos too
    with pytest.raises(ValueError, match="aggregate"):
        FrameReward(mean_px, "mode")


def test_temporal_consistency_maths():
    torch.manual_seed(0)
    frame = torch.rand(3, 8, 8)
    still = frame.expand(2, 4, 3, 8, 8).clone()
    assert torch.allclose(TemporalConsistency()(still), torch.ones(2), atol=1e-5)
    flipped = still.clone()
    flipped[:, 1::2] = 1 - still[:, 1::2]  # centred pixels exactly negated every other frame
    assert torch.allclose(TemporalConsistency()(flipped), -torch.ones(2), atol=1e-5)
    a, b = torch.rand(3, 8, 8), torch.rand(3, 8, 8)
    v = torch.stack([a, b, a])[None]
    fa, fb = (a - a.mean()).flatten(), (b - b.mean()).flatten()
    cos = float(fa @ fb / (fa.norm() * fb.norm()))
    assert float(TemporalConsistency()(v)) == pytest.approx(cos, abs=1e-5)
    raw = float(a.flatten() @ b.flatten() / (a.norm() * b.norm()))
    assert float(TemporalConsistency(center=False)(v)) == pytest.approx(raw, abs=1e-5)
    feats = TemporalConsistency(features=lambda x: x.mean(dim=(2, 3)), aggregate="min")
    assert float(feats(v)) <= 1.0
    assert torch.equal(TemporalConsistency()(torch.rand(3, 1, 3, 8, 8)), torch.ones(3))  # one frame
    combo = Ensemble([(TemporalConsistency(), 1.0), (FunctionReward(contrast), 1.0)], normalize="zscore")
    scores = combo(torch.cat([still, flipped]))
    assert scores.shape == (4,) and torch.isfinite(scores).all()
    assert set(combo.components(still)) == {"temporal_consistency", "contrast"}


# ---------------------------------------------------------------------------- export


def test_export_video_gif_and_mp4(tmp_path):
    import imageio.v2 as imageio

    frames = torch.zeros(6, 3, 16, 16)
    for f in range(6):
        frames[f, :, 4:8, f:f + 4] = 1.0
    gif = export_video(frames, tmp_path / "clip.gif", fps=4, min_size=64)
    read = imageio.mimread(gif)
    assert len(read) == 6 and read[0].shape[:2] == (64, 64)
    assert read[0][:, :, 0].max() > 200 and read[0][:, :, 0].min() < 50
    from PIL import Image

    pil = [Image.fromarray((f.permute(1, 2, 0).numpy() * 255).astype(np.uint8)) for f in frames]
    assert len(imageio.mimread(export_video(pil, tmp_path / "pil.gif", fps=4))) == 6
    mp4 = export_video(frames, tmp_path / "clip.mp4", fps=4)
    if importlib.util.find_spec("imageio_ffmpeg") is None:
        assert mp4.suffix == ".gif" and mp4.exists()  # no ffmpeg: a GIF instead
    else:
        assert mp4.suffix == ".mp4"
        assert len(list(imageio.get_reader(mp4))) == 6
    with pytest.raises(ValueError, match="format"):
        export_video(frames, tmp_path / "clip.avi")


def test_cli_writes_a_video_for_video_models(tmp_path):
    import imageio.v2 as imageio

    from evosearch.cli import write_outputs

    pipe = testing.tiny_hunyuan_video(seed=0)
    out = SearchPipeline.from_pipe(pipe, reward=contrast, method=BestOfN(n=2))(
        PROMPT, seed=0, num_inference_steps=2, num_frames=5, progress=False)
    paths = write_outputs(out, tmp_path, "best-of-n", fps=4)
    assert {"best", "video", "population", "record"} <= set(paths)
    assert paths["video"].suffix in (".mp4", ".gif") and paths["video"].exists()
    if paths["video"].suffix == ".gif":
        assert len(imageio.mimread(paths["video"])) == len(out.best.video) == 5


# ---------------------------------------------------------------------------- moving digits data and judge


def test_moving_digit_data_and_judge():
    from evosearch.bundled.moving_digits import MovingDigitJudge, load_digit_sprites, moving_digit_videos

    sprites, labels = load_digit_sprites("test")
    v = moving_digit_videos(sprites[:20], 12, np.random.default_rng(0))
    assert v.shape == (20, 12, 16, 16) and v.min() >= 0 and v.max() <= 1
    np.testing.assert_allclose(v.sum(axis=(2, 3)), np.repeat(sprites[:20].sum(axis=(1, 2))[:, None], 12, 1),
                               rtol=1e-5)  # the whole digit stays on the canvas
    coms = [(np.argwhere(f > 0).mean(0)) for f in v[0]]
    steps = np.abs(np.diff(np.array(coms), axis=0)).max()
    assert 0 < steps <= 1 + 1e-6  # at most one pixel per frame
    judge = MovingDigitJudge()
    videos = torch.from_numpy(moving_digit_videos(sprites[:60], 3, np.random.default_rng(1)))[:, :, None]
    acc = float((judge.predict(videos) == labels[:60, None]).mean())
    assert acc > 0.9


@pytest.mark.skipif(not (asset_path("moving_digits") / "model_index.json").exists(),
                    reason="bundled moving-digits weights not trained")
def test_bundled_moving_digits_model():
    from evosearch.bundled.moving_digits import load_moving_digits_pipeline, moving_digits_reward

    pipe = load_moving_digits_pipeline()
    frames = pipe("4", num_videos=2, num_inference_steps=5, generator=torch.Generator().manual_seed(0)).frames
    assert len(frames) == 2 and len(frames[0]) == 16 and frames[0][0].size == (16, 16)
    search = SearchPipeline.from_pipe(pipe, reward=moving_digits_reward(), method=TreeOfFrames(roots=2))
    out = search("4", seed=0, num_inference_steps=5, progress=False)
    assert out.stats.nfe == 5 * (2 + 2 + 2 + 2) and np.isfinite(out.best.reward) and len(out.best.video) == 16


def test_video_factories_are_deterministic_and_leave_the_rng_alone():
    state = torch.random.get_rng_state()
    a, b, c = testing.tiny_cogvideox(seed=0), testing.tiny_cogvideox(seed=0), testing.tiny_cogvideox(seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    pa, pb, pc = (next(p.transformer.parameters()) for p in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)
    assert (a.default_height, a.default_width, a.default_num_frames) == (16, 16, 9)
