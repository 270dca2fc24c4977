"""Progress, Cancel and the best latent of a search running inside ComfyUI.

evosearch calls its ``callback`` with a ``"progress"`` event after every micro-batch of
denoising (``max_batch_size`` rows) and then asks ``stop()``; scored batches arrive as
``"generation"`` events. :class:`ComfyProgress` turns those into ComfyUI's progress bar (total:
the plan's NFE, ``SearchEvent.planned_nfe``, times the number of latents searched), a preview
of each improvement, and reads Cancel (``/interrupt``) for ``stop``; so a Cancel is seen
within one micro-batch, even in a generation of thousands of candidates.
"""

from __future__ import annotations

import logging
import math
import time

import torch

PREVIEW_MAX_SIZE = 512
#: least seconds between two progress messages (each one is a websocket message to the browser);
#: improvements with a preview and the last update of each latent are always sent
PROGRESS_INTERVAL = 0.1
#: least seconds between two log lines about waves of the same generation
LOG_INTERVAL = 2.0


class BestLatentTracker:
    """Keeps the latent of the best sample a search scored, without re-generating it.

    Every scored batch is a ``finish`` of the Stepper (which keeps its states in
    ``last_finished``) followed by a ``"generation"`` event with the rewards in the same order;
    the best is kept as evosearch's search context keeps it (first maximum, strict improvement).
    """

    def __init__(self, stepper):
        self.stepper = stepper
        self.reward = -math.inf
        self.latent: torch.Tensor | None = None
        self.image: torch.Tensor | None = None

    def __call__(self, event) -> bool:
        """Update from a callback event; True when the best improved."""
        if event.get("type") != "generation" or self.stepper.last_finished is None:
            return False
        rewards = event["rewards"]
        k = max(range(len(rewards)), key=lambda j: rewards[j])
        if self.latent is not None and not rewards[k] > self.reward:
            return False
        self.reward = rewards[k]
        self.latent = self.stepper.last_finished[k:k + 1].clone()
        images = event.get("images")
        self.image = None if images is None else images[k].detach().float().cpu()
        return True


def preview_of(image: torch.Tensor):
    """ComfyUI's preview tuple for an image (3, H, W) in [0, 1]."""
    from PIL import Image

    arr = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return "JPEG", Image.fromarray(arr), PREVIEW_MAX_SIZE


class ComfyProgress:
    """ComfyUI's progress bar and Cancel for the searches of one node run (one per latent of the
    batch, one after another). ``callback(event)`` is the search's callback for the current latent
    (set :attr:`item` first); ``stop()`` is its stop."""

    def __init__(self, utils, model_management, planned_nfe: int, items: int = 1):
        self.mm = model_management
        self.items = int(items)
        self.total = int(planned_nfe) * self.items
        self.pbar = utils.ProgressBar(self.total)
        self.item = 0
        self.tracker: BestLatentTracker | None = None
        self.value = 0
        self._sent = -math.inf
        self._logged: tuple = (None, -math.inf)

    def start_item(self, item: int, tracker: BestLatentTracker) -> None:
        self.item, self.tracker = int(item), tracker

    def stop(self) -> bool:
        """True once Cancel was pressed (ComfyUI's interrupt flag)."""
        return bool(self.mm.processing_interrupted())

    def callback(self, event) -> None:
        improved = self.tracker(event) if self.tracker is not None else False
        planned = event.get("planned_nfe")
        if planned:
            self.total = int(planned) * self.items
        self.value = self.item * (self.total // self.items) + int(event.get("nfe", 0))
        preview = None
        if event.get("type") == "generation":
            self._log(event)
            if improved and self.tracker.image is not None:
                preview = preview_of(self.tracker.image)
        now = time.monotonic()
        if preview is not None or now - self._sent >= PROGRESS_INTERVAL:
            self._send(preview)
            self._sent = now

    def finish_item(self) -> None:
        """The last value of the current latent (throttling may have held it back)."""
        self._send(None)

    def _send(self, preview) -> None:
        try:
            self.pbar.update_absolute(min(self.value, self.total), self.total, preview)
        except self.mm.InterruptProcessingException:  # the server's progress hook saw Cancel: keep it for stop()
            self.mm.interrupt_current_processing(True)

    def _log(self, event) -> None:
        generation, now = event["generation"], time.monotonic()
        if generation == self._logged[0] and now - self._logged[1] < LOG_INTERVAL:
            return
        self._logged = (generation, now)
        prefix = f"latent {self.item}: " if self.items > 1 else ""
        logging.info("[evosearch] %sgeneration %s: %d scored, best reward %.6g, %d/%d NFE", prefix, generation,
                     len(event["rewards"]), event["best_reward"], event["nfe"], self.total // self.items)


__all__ = ["BestLatentTracker", "ComfyProgress", "PROGRESS_INTERVAL", "preview_of"]
