"""Frames to the encoder as they are decoded, so the encode overlaps generation.

Without this a diffusers engine made every frame (denoising, then the VAE decode of the whole
video) before the encoder saw the first one, and the encode followed the generation. Here the
chunk loop runs in a thread of its own (``streamed``) and the output frames are an iterator the
encoder pulls, each frame as soon as it is final:

- **one chunk** (every video within the model's frame window): a forward hook on the VAE's
  decoder (``VaeTap``) hands over the frames of each latent frame as the decoder makes them.
  The Wan VAE decodes causally, one latent frame at a time (the first gives one frame, each
  later one ``temporal`` frames) with a feature cache carried from one to the next, so its
  decoder's output per latent frame *is* a slice of the whole video's output: the hook does
  what the pipeline does to it afterwards (``unpatchify`` where the VAE patches, clamp to
  [-1, 1], ``(x * 0.5 + 0.5).clamp(0, 1)``, ``round(x * 255)`` to uint8), all element-wise, so
  the frames are the same values the pipeline returns, and the video the same bytes. The
  slicing follows the VAE's own causal chunking; no other slicing would be exact. With VAE
  tiling on (the decoder then sees tiles, not frames), or a VAE of another kind (LTX decodes
  the whole latent at once), there is no hook and the frames come with the chunk.
- **several chunks** (long videos): each chunk's frames are final once the next chunk has been
  planned on them, up to where the next chunk's cross-fade begins; those go to the encoder
  while the next chunks are denoised.

When the chunk loop ends, its frames (the timeline, which checkpoints keep) are the reference:
the streamed ones are checked equal to them (a mismatch is logged as an error; it would mean a
diffusers VAE that no longer decodes causally per latent frame) and the frames not yet sent are
taken from it. An error in the thread (a cancel, an engine error) is raised to the encoder at
its next frame; an encoder that stops early stops the decode at its next latent frame and waits
for the thread, so no pipeline call outlives the job.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from PIL import Image

from ..media.frames import fit_cover, to_array

log = logging.getLogger("opendance.engines")


class Abandoned(Exception):
    """The encoder stopped pulling: the decode stops at its next latent frame."""


class FrameFeed:
    """The native frames so far, from the thread that makes them to the one that encodes them."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._frames: list[np.ndarray] = []
        self._done = False
        self._error: BaseException | None = None
        self._closed = False

    def add(self, frames: list[np.ndarray]) -> None:
        """More frames, in order (the decoder's, as it makes them)."""
        with self._cond:
            if self._closed:
                raise Abandoned()
            self._frames.extend(frames)
            self._cond.notify_all()

    def final(self, frames: list[np.ndarray], upto: int) -> None:
        """``frames[:upto]`` are final (a chunk's, once the next one no longer changes them);
        the ones already streamed are checked against them."""
        with self._cond:
            self._check(frames, min(upto, len(self._frames)))
            if upto > len(self._frames):
                self._frames.extend(frames[len(self._frames) : upto])
                self._cond.notify_all()

    def finish(self, frames: list[np.ndarray]) -> None:
        with self._cond:
            self._check(frames, min(len(frames), len(self._frames)))
            if len(self._frames) > len(frames):
                log.error("the VAE streamed %d frames, the pipeline made %d", len(self._frames), len(frames))
            self._frames = list(frames)
            self._done = True
            self._cond.notify_all()

    def fail(self, exc: BaseException) -> None:
        with self._cond:
            self._error = exc
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True

    def get(self, k: int) -> np.ndarray:
        """Frame ``k``, waiting until it is there."""
        with self._cond:
            while k >= len(self._frames) and not self._done and self._error is None:
                self._cond.wait()
            if self._error is not None:
                raise self._error
            return self._frames[min(k, len(self._frames) - 1)]

    def _check(self, frames: list[np.ndarray], n: int) -> None:
        for i in range(n):
            if self._frames[i] is not frames[i] and not np.array_equal(self._frames[i], frames[i]):
                log.error("streamed frame %d differs from the pipeline's output (the VAE no longer decodes causally?)", i)
                return


def tappable(vae: Any) -> bool:
    """Whether ``VaeTap`` streams this VAE's frames exactly (see the module docstring)."""
    return type(vae).__name__ == "AutoencoderKLWan" and not getattr(vae, "use_tiling", False) and hasattr(vae, "decoder")


class VaeTap:
    """While entered, every call of ``vae.decoder`` (one latent frame of a Wan VAE's decode)
    hands its frames to ``feed`` as uint8 RGB, as the pipeline would return them."""

    def __init__(self, vae: Any, feed: FrameFeed, denormalize: bool = True) -> None:
        self.vae = vae
        self.feed = feed
        self.denormalize = denormalize  # the pipeline's video_processor.config.do_normalize
        self._handle = None

    def __enter__(self) -> VaeTap:
        self._handle = self.vae.decoder.register_forward_hook(self._decoded)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _decoded(self, _module, _args, out) -> None:
        import torch

        patch = self.vae.config.get("patch_size") if hasattr(self.vae.config, "get") else None
        if patch is not None:
            from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

            out = unpatchify(out, patch_size=patch)
        with torch.no_grad():
            # AutoencoderKLWan._decode, then VideoProcessor.postprocess_video(output_type="np"),
            # then _torch_utils.to_uint8_frames: the same element-wise steps in the same order.
            x = torch.clamp(out, min=-1.0, max=1.0)
            if self.denormalize:
                x = (x * 0.5 + 0.5).clamp(0, 1)
            video = x[0].permute(1, 2, 3, 0).cpu().float().numpy()  # T x H x W x C
        self.feed.add([np.round(np.clip(f, 0.0, 1.0) * 255).astype(np.uint8) for f in video])


# engine -> its stream still running: one job at a time per engine (its pipelines, the VAE's
# feature cache); ``settle`` waits for it before the engine starts another job or closes.
_RUNNING: weakref.WeakKeyDictionary[Any, Streamed] = weakref.WeakKeyDictionary()


def settle(engine: Any) -> None:
    """Wait until ``engine``'s last stream has made all its frames (they stay for its reader)."""
    stream = _RUNNING.pop(engine, None)
    if stream is not None:
        stream.wait()


class Streamed:
    """``_torch_utils.output_frames`` of the ``native`` frames ``make(feed)`` makes in a thread,
    each output frame as soon as its native frame is in the feed. ``make`` returns the final
    native frames; the VAEs of the pipelines in ``taps`` (a one-chunk job's) stream each latent
    frame's frames while it runs, those that ``tappable`` allows.

    Made, it blocks until the first frame is there (the denoising done) and raises what the
    thread raised before that (a cancel, an engine error), as a pipeline call in the caller's
    thread would; later errors come at the next frame. ``close`` (also at the end, and when the
    iterator is dropped) stops the decode at its next latent frame and joins the thread."""

    def __init__(
        self,
        engine: Any,
        make: Callable[[FrameFeed], list[np.ndarray]],
        native: int,
        num_frames: int,
        width: int,
        height: int,
        taps: list[Any] | tuple[Any, ...] = (),
    ) -> None:
        self._feed = FrameFeed()
        self._native, self._num_frames, self._size = native, num_frames, (width, height)
        self._taps = taps
        self._make = make
        self._i, self._last_k = 0, -1
        self._last: np.ndarray | None = None
        self._thread = threading.Thread(target=self._run, name="decode-stream", daemon=True)
        self._thread.start()
        _RUNNING[engine] = self
        try:
            self._feed.get(0)
        except BaseException:
            self.close()
            raise

    def _run(self) -> None:
        feed = self._feed
        try:
            with contextlib.ExitStack() as stack:
                tapped: set[int] = set()
                for pipe in self._taps:
                    vae = getattr(pipe, "vae", None)
                    if tappable(vae) and id(vae) not in tapped:  # pipelines may share one VAE
                        tapped.add(id(vae))
                        processor = getattr(pipe, "video_processor", None)
                        denormalize = bool(getattr(getattr(processor, "config", None), "do_normalize", True))
                        stack.enter_context(VaeTap(vae, feed, denormalize))
                frames = self._make(feed)
            feed.finish(frames)
        except BaseException as exc:  # handed to the encoder's thread
            feed.fail(exc)

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        if self._i >= self._num_frames:
            self.close()
            raise StopIteration
        i, n = self._i, self._num_frames
        k = round(i * (self._native - 1) / (n - 1)) if n > 1 else 0
        if k != self._last_k:
            try:
                frame = self._feed.get(k)
            except BaseException:
                self.close()
                raise
            self._last_k, self._last = k, to_array(fit_cover(Image.fromarray(frame), *self._size))
        self._i += 1
        assert self._last is not None  # k == 0 on the first frame: never -1
        return self._last

    def wait(self) -> None:
        self._thread.join()

    def close(self) -> None:
        self._feed.close()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def __del__(self) -> None:
        self.close()
