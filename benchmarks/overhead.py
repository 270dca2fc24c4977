"""Overhead of the search machinery on SD-shaped pipelines (random weights, UNet-dominated).

Measures (medians over --repeats runs, one torch thread, runs interleaved A B A B):
  1. BestOfN(n) wall time / the plain diffusers pipeline producing the same n images with
     the same steps and the same batch size (n / batch_size calls of pipe(...)); 60M UNet.
  2. EvoSearch wall time / the pure denoiser time of the NFE it spent (time inside
     unet.forward, measured with hooks during the same run); 60M UNet (target <= 1.05) and a
     5.8M UNet (target <= 1.01: there the machinery's own cost is not hidden by the network).
  3. Equal work against a minimal hand-written diffusers loop (encode once; per batch of
     --equal-batch: randn latents, for each step UNet with CFG + DDIMScheduler.step(eta=1),
     VAE decode, score): BestOfN(n=--equal-n) at the same batch, steps and eta, on the
     5.8M UNet; CPU time (process time) ratio, target <= 1.03, and wall time ratio.
Writes benchmarks/results/overhead.json.

    python benchmarks/overhead.py [--n 8] [--batch-size 4] [--steps 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from evosearch import BestOfN, EvoSearch, FunctionReward, SearchPipeline
from evosearch.io import atomic_write_json
from evosearch.testing import sd_shaped


class DenoiserTimer:
    """Wall time spent inside a module's forward (hooks)."""

    def __init__(self, module):
        self.seconds = 0.0
        self._t = None
        module.register_forward_pre_hook(self._pre)
        module.register_forward_hook(self._post)

    def _pre(self, *args):
        self._t = time.perf_counter()

    def _post(self, *args):
        self.seconds += time.perf_counter() - self._t


def equal_work(args, reward, prompt) -> dict:
    """BestOfN vs a minimal diffusers loop doing the same work (section 3 of the module docstring)."""
    from diffusers import DDIMScheduler

    pipe = sd_shaped(seed=0, resolution=args.small_resolution, block_out_channels=(32, 64, 128, 128))
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    params = sum(p.numel() for p in pipe.unet.parameters())
    n, batch, steps, g = args.equal_n, args.equal_batch, args.equal_steps, args.guidance_scale
    timer = DenoiserTimer(pipe.unet)

    @torch.no_grad()
    def minimal():
        pe, npe = pipe.encode_prompt(prompt, "cpu", 1, True)
        cond = torch.cat([npe, pe])
        size = args.small_resolution // pipe.vae_scale_factor
        for k in range(n // batch):
            gen = torch.Generator().manual_seed(k)
            x = torch.randn((batch, 4, size, size), generator=gen)
            pipe.scheduler.set_timesteps(steps)
            emb = cond.repeat_interleave(batch, 0)
            for t in pipe.scheduler.timesteps:
                out_u, out_c = pipe.unet(torch.cat([x, x]), t, encoder_hidden_states=emb).sample.chunk(2)
                x = pipe.scheduler.step(out_u + g * (out_c - out_u), t, x, eta=1.0, generator=gen).prev_sample
            images = pipe.vae.decode(x / pipe.vae.config.scaling_factor).sample
            reward((images / 2 + 0.5).clamp(0, 1), [prompt] * batch)

    search = SearchPipeline.from_pipe(pipe, reward=reward, method=BestOfN(n=n), max_batch_size=batch, eta=1.0)
    evo = SearchPipeline.from_pipe(pipe, reward=reward, method=EvoSearch(), max_batch_size=batch, eta=1.0)

    def searched():
        return search(prompt, seed=0, num_inference_steps=steps, guidance_scale=g, progress=False, output_type="pt")

    def measure(fn):
        timer.seconds = 0.0
        c, t = time.process_time(), time.perf_counter()
        fn()
        return time.process_time() - c, time.perf_counter() - t, timer.seconds

    minimal()  # warm-up
    runs = {"minimal": [], "best_of_n": [], "evosearch": []}
    for _ in range(args.repeats):  # interleaved: A B A B
        runs["minimal"].append(measure(minimal))
        runs["best_of_n"].append(measure(searched))
        runs["evosearch"].append(measure(lambda: evo(prompt, seed=0, num_inference_steps=steps, guidance_scale=g,
                                                     nfe_budget=n * steps, progress=False, output_type="pt")))
    med = {k: [statistics.median(r[j] for r in v) for j in range(3)] for k, v in runs.items()}
    return {"unet_parameters": params, "n": n, "batch": batch, "steps": steps, "runs": runs,
            "cpu_ratio": med["best_of_n"][0] / med["minimal"][0], "wall_ratio": med["best_of_n"][1] / med["minimal"][1],
            "evosearch_wall_over_denoiser": med["evosearch"][1] / med["evosearch"][2],
            "median": {k: {"cpu_s": v[0], "wall_s": v[1], "denoiser_s": v[2]} for k, v in med.items()}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--guidance-scale", type=float, default=7.5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--equal-n", type=int, default=64, help="samples of the equal-work comparison (default: 64)")
    ap.add_argument("--equal-batch", type=int, default=16, help="its batch size (default: 16)")
    ap.add_argument("--equal-steps", type=int, default=25, help="its steps (default: 25)")
    ap.add_argument("--small-resolution", type=int, default=128, help="resolution of the 5.8M-UNet runs")
    ap.add_argument("--skip-large", action="store_true", help="only the 5.8M-UNet measurements")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "overhead.json"))
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)

    reward = FunctionReward(lambda images, prompts: images.mean(dim=(1, 2, 3)), name="brightness")
    prompt = "a photograph of an astronaut riding a horse"
    small = equal_work(args, reward, prompt)
    result = {"settings": vars(args) | {"torch_threads": torch.get_num_threads()}, "equal_work": small}
    if not args.skip_large:
        result["large"] = large(args, reward, prompt)
    print(f"{'measure':58s} {'value':>8s} target")
    if "large" in result:
        print(f"{'BestOfN / plain StableDiffusionPipeline, 60M UNet (wall)':58s} "
              f"{result['large']['best_of_n_over_plain']:8.3f} <= 1.05")
        print(f"{'EvoSearch wall / denoiser time, 60M UNet':58s} {result['large']['evosearch_over_denoiser']:8.3f} "
              f"<= 1.05")
    print(f"{'EvoSearch wall / denoiser time, 5.8M UNet':58s} {small['evosearch_wall_over_denoiser']:8.3f} <= 1.01")
    print(f"{'BestOfN / minimal diffusers loop, 5.8M UNet, CPU time':58s} {small['cpu_ratio']:8.3f} <= 1.03")
    print(f"{'BestOfN / minimal diffusers loop, 5.8M UNet, wall time':58s} {small['wall_ratio']:8.3f}")
    atomic_write_json(args.out, result)
    print(f"wrote {Path(args.out).name}")


def large(args, reward, prompt) -> dict:
    """Sections 1 and 2 on the 60M SD-shaped UNet."""
    pipe = sd_shaped(seed=0, resolution=args.resolution)
    timer = DenoiserTimer(pipe.unet)
    common = dict(num_inference_steps=args.steps, guidance_scale=args.guidance_scale)

    def plain():
        for k in range(args.n // args.batch_size):
            pipe(prompt, num_images_per_prompt=args.batch_size, height=args.resolution, width=args.resolution,
                 generator=torch.Generator().manual_seed(k), output_type="pt", **common)

    bon = SearchPipeline.from_pipe(pipe, reward=reward, method=BestOfN(n=args.n), max_batch_size=args.batch_size)
    evo = SearchPipeline.from_pipe(pipe, reward=reward, method=EvoSearch(), max_batch_size=args.batch_size)

    def timed(fn):
        timer.seconds = 0.0
        t = time.perf_counter()
        result = fn()
        return time.perf_counter() - t, timer.seconds, result

    plain()  # warm-up
    rows = {"plain": [], "best_of_n": [], "evosearch": [], "evosearch_denoiser": [], "best_of_n_denoiser": []}
    for r in range(args.repeats):
        wall, _, _ = timed(plain)
        rows["plain"].append(wall)
        wall, den, _ = timed(lambda: bon(prompt, seed=r, progress=False, height=args.resolution,
                                         width=args.resolution, **common))
        rows["best_of_n"].append(wall)
        rows["best_of_n_denoiser"].append(den)
        wall, den, out_e = timed(lambda: evo(prompt, seed=r, nfe_budget=args.n * args.steps, progress=False,
                                             height=args.resolution, width=args.resolution, **common))
        rows["evosearch"].append(wall)
        rows["evosearch_denoiser"].append(den)
    med = {k: statistics.median(v) for k, v in rows.items()}
    return {"seconds": rows, "median_seconds": med, "best_of_n_over_plain": med["best_of_n"] / med["plain"],
            "evosearch_over_denoiser": med["evosearch"] / med["evosearch_denoiser"], "evosearch_nfe": out_e.stats.nfe,
            "evosearch_plan": out_e.settings["plan"]}


if __name__ == "__main__":
    main()
