"""Training data: clips, captions and conditions in the model's input format, in a fixed order.

    source = WorldSource(seed=0)                        # or FolderSource("my_videos/")
    data = TrainDataset(source, TinyAdapter())
    requests = plan_step(seed=0, step=41, rank=0, world_size=1, batch=16, source=source,
                         frames=16, size=64, conditions=True)
    batch = collate([data[r] for r in requests])        # what a DataLoader worker produces

Order. What a step trains on is a pure function of (seed, step, rank, i): the i-th item of
process `rank` at `step` is the clip at global position p = (step * world_size + rank) * batch + i
of the source, and its own randomness (inpainting mask, frame window, extractor choice) comes from
`mix_seed(seed, p)`. So a resumed run sees exactly the batches an uninterrupted one would, and
the processes of a data-parallel run see disjoint clips. The world is an endless stream of fresh
clips (position p -> world clip p, modulo `length` when a finite pool is asked for); a folder is
visited epoch by epoch, each epoch in its own permutation.

Conditions go through the same `ConditionAdapter` the pipeline uses at inference, so training and
sampling see identical formats. Stage 1 (text to video) builds none of them: its world clips skip
the H.264 round trip.

Sources:
- `WorldSource`: the procedural world (`vcomp.train.synthetic`). Depth, sketch and masks are
  exact; motion goes through the H.264 extractor. A fraction `user_path_prob` of stage-2 clips
  take their depth and sketch from the extractors users' videos go through (heuristic depth,
  Canny), so the model also learns those looks. A request marked `simple` gets a simple scene
  instead (one object on a solid background: the start of a data curriculum).
- `FolderSource`: a user's videos with captions (a `.txt` beside each video, or `captions.jsonl`
  lines `{"video": "relative/path.mp4", "caption": "..."}`), cut into clips of `frames` frames at
  a stride (default: about 8 fps, the world's rate), scaled to cover and centre-cropped to the
  model size; conditions extracted with `vcomp.conditions`.

This module reads files only through `vcomp.io` (and writes only its optional npz cache).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vcomp.conditions.condition_set import ConditionSet
from vcomp.errors import InputError

VIDEO_SUFFIXES = {".mp4", ".mov", ".webm", ".mkv", ".avi", ".gif", ".m4v", ".mpg", ".mpeg", ".ts"}
CAPTIONS_FILE = "captions.jsonl"
WORLD_FPS = 8.0  # frame rate of the procedural world's clips (and the default for folders)


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (numpy's SeedSequence hashing: well mixed, platform independent)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


@dataclass(frozen=True)
class Request:
    """One item of one step, as the sampler hands it to the dataset."""

    index: int  # clip index in the source
    seed: int  # the item's own randomness (mask, frame window, extractor choice)
    frames: int
    size: int
    conditions: bool  # stage 2: build the conditions too
    simple: bool = False  # world: one object on a solid background (a curriculum's first phase)


@functools.lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, 7, epoch]).permutation(n)


def plan_step(seed: int, step: int, rank: int, world_size: int, batch: int, source, frames: int, size: int,
              conditions: bool, simple: bool = False) -> list[Request]:
    """The requests of process `rank` at `step` (see the module docstring)."""
    n = len(source)
    out = []
    for i in range(batch):
        p = (step * world_size + rank) * batch + i
        epoch, k = divmod(p, n)
        index = int(_permutation(seed, epoch, n)[k]) if source.shuffle else k
        out.append(Request(index, mix_seed(seed, 11, p), frames, size, conditions, simple))
    return out


# ---------------------------------------------------------------- masks


def random_mask(rng: np.random.Generator, frames: int, size: int, object_mask: np.ndarray | None = None,
                p_object: float = 0.5) -> np.ndarray:
    """An inpainting mask `[T, 1, S, S]` float32, 1 = regenerate.

    With an object mask (the world's union of objects) and probability `p_object`: the objects,
    dilated by 2 px (regenerate what moves). Otherwise a static box covering 6-50% of the frame.
    """
    if object_mask is not None and object_mask.any() and rng.random() < p_object:
        import cv2

        kernel = np.ones((5, 5), np.uint8)
        grown = [cv2.dilate((m[0] > 0.5).astype(np.uint8), kernel) for m in object_mask]
        return np.stack(grown)[:, None].astype(np.float32)
    mask = np.zeros((frames, 1, size, size), np.float32)
    bw, bh = (max(2, int(round(rng.uniform(0.25, 0.7) * size))) for _ in range(2))
    x0, y0 = int(rng.integers(0, size - bw + 1)), int(rng.integers(0, size - bh + 1))
    mask[:, :, y0:y0 + bh, x0:x0 + bw] = 1.0
    return mask


def user_path_conditions(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Depth and sketch as a user's video gets them (`vcomp.conditions` extractors, no weights)."""
    from vcomp.conditions.depth import estimate_depth
    from vcomp.conditions.sketch import extract_sketch

    depth, _ = estimate_depth(frames)
    sketch, _ = extract_sketch(frames)
    return {"depth": depth, "sketch": sketch, "single_sketch": sketch[0].copy()}


@dataclass
class RawClip:
    """A clip as a source gives it, before the adapter."""

    frames: np.ndarray  # uint8 [T, H, W, 3]
    caption: str
    conditions: ConditionSet | None = None
    info: dict = field(default_factory=dict)
    focus: np.ndarray | None = None  # float32 [T, 1, H, W] in [0, 1]: where the loss weighs more (the objects)


# ---------------------------------------------------------------- the procedural world


class WorldSource:
    """Clips of the procedural world (`split`: "train" or "heldout"). `length`: the pool of clips
    (default: endless)."""

    name = "world"
    shuffle = False

    def __init__(self, seed: int = 0, length: int = 10**12, cache_dir: str | os.PathLike | None = None,
                 num_objects: int | tuple[int, ...] = (1, 2), user_path_prob: float = 0.25, p_object_mask: float = 0.5,
                 split: str = "train"):
        self.seed, self.length, self.split = int(seed), int(length), split
        self.cache_dir = str(cache_dir) if cache_dir is not None else None
        self.num_objects = num_objects
        self.user_path_prob, self.p_object_mask = float(user_path_prob), float(p_object_mask)
        self._datasets: dict = {}

    def __len__(self) -> int:
        return self.length

    def describe(self) -> dict:
        return {"type": "world", "split": self.split, "seed": self.seed, "clips": self.length, "num_objects": self.num_objects,
                "user_path_prob": self.user_path_prob, "cache": self.cache_dir}

    def captions(self) -> list[str]:
        """Words every caption may use (for the vocabulary)."""
        from vcomp.train.synthetic import VOCABULARY

        return list(VOCABULARY)

    def max_tokens(self) -> int:
        """Text tokens the longest caption needs: <bos> + 8 words per object + "and"s + 6 + <eos>."""
        most = max(self.num_objects) if isinstance(self.num_objects, tuple) else int(self.num_objects)
        return 2 + 8 * most + (most - 1) + 6

    def _dataset(self, frames: int, size: int, conditions: bool, simple: bool):
        key = (frames, size, conditions, simple)
        if key not in self._datasets:
            from vcomp.train.synthetic import BACKGROUND_KINDS, WorldDataset

            cache = self.cache_dir if self.length < 10**12 else None  # an endless stream is never revisited
            self._datasets[key] = WorldDataset(length=self.length, seed=self.seed, split=self.split, size=size,
                                               frames=frames, num_objects=1 if simple else self.num_objects,
                                               motion="extracted" if conditions else "none", style=conditions,
                                               cache_dir=cache, backgrounds=("solid",) if simple else BACKGROUND_KINDS)
        return self._datasets[key]

    def clip(self, req: Request, rng: np.random.Generator) -> RawClip:
        data = self._dataset(req.frames, req.size, req.conditions, req.simple)
        item = data[req.index]
        frames = item["frames"]
        focus = item["mask"]
        if not req.conditions:
            return RawClip(frames, item["caption"], focus=focus)
        arrays = {k: item[k] for k in ("motion", "depth", "sketch", "image", "single_sketch", "style")}
        user_path = rng.random() < self.user_path_prob
        if user_path:
            arrays.update(user_path_conditions(frames))
        arrays["mask"] = random_mask(rng, req.frames, req.size, item["mask"], self.p_object_mask)
        cs = ConditionSet(**arrays, meta={"fps": WORLD_FPS, "source": "world"})
        return RawClip(frames, item["caption"], cs, {"user_path": bool(user_path)}, focus=focus)


# ---------------------------------------------------------------- a folder of the user's videos


def find_captioned_videos(folder: str | os.PathLike) -> list[tuple[Path, str]]:
    """(video, caption) for every video under `folder`: captions from `captions.jsonl`, else a
    `.txt` beside the video; a video with neither gets "" (it trains the unconditional branch)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise InputError(f"--data {folder}: no such folder; give 'world' or a folder of videos with captions")
    videos = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES
                    and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not videos:
        raise InputError(f"{folder} has no videos ({', '.join(sorted(VIDEO_SUFFIXES))}); put clips with a .txt "
                         f"caption beside each (or a {CAPTIONS_FILE}) in it")
    captions: dict[Path, str] = {}
    jsonl = folder / CAPTIONS_FILE
    if jsonl.is_file():
        for n, line in enumerate(jsonl.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                captions[(folder / row["video"]).resolve()] = str(row["caption"]).strip()
            except (json.JSONDecodeError, KeyError, TypeError):
                raise InputError(f"{jsonl}:{n}: expected a JSON object with \"video\" and \"caption\"") from None
    out = []
    for video in videos:
        text = captions.get(video.resolve())
        if text is None and video.with_suffix(".txt").is_file():
            text = video.with_suffix(".txt").read_text(encoding="utf-8").strip()
        out.append((video, " ".join((text or "").split())))
    return out


class FolderSource:
    """Clips of `frames` frames cut from a folder of captioned videos (see the module docstring)."""

    name = "folder"
    shuffle = True

    def __init__(self, folder: str | os.PathLike, frames: int = 16, stride: int | None = None,
                 fps: float = WORLD_FPS, cache_dir: str | os.PathLike | None = None):
        from vcomp.io import probe

        self.folder = Path(folder).expanduser()
        self.window, self.fps, self.stride = int(frames), float(fps), stride
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.videos = find_captioned_videos(self.folder)
        self.clips: list[tuple[int, int, int]] = []  # (video, start frame, stride)
        for v, (path, _) in enumerate(self.videos):
            info = probe(path)
            step = int(stride) if stride else max(1, int(round(info.fps / self.fps)))
            span = (self.window - 1) * step + 1
            starts = range(0, max(1, info.frame_count - span + 1), span) if info.frame_count >= span else [0]
            self.clips += [(v, s, step) for s in starts]

    def __len__(self) -> int:
        return len(self.clips)

    def describe(self) -> dict:
        uncaptioned = sum(1 for _, c in self.videos if not c)
        return {"type": "folder", "folder": str(self.folder), "videos": len(self.videos), "clips": len(self.clips),
                "window": self.window, "stride": self.stride or f"auto ({self.fps:g} fps)",
                "uncaptioned": uncaptioned}

    def captions(self) -> list[str]:
        return [c for _, c in self.videos]

    def max_tokens(self) -> int:
        import re

        words = max((len(re.findall(r"[a-z0-9]+", c.lower())) for _, c in self.videos), default=0)
        return words + 2

    def _frames(self, index: int, size: int) -> tuple[np.ndarray, float]:
        """The clip's `window` frames at `size` (cached as npz when a cache folder is given)."""
        from vcomp.io import Sampling, read_clip

        v, start, step = self.clips[index]
        path = self.videos[v][0]
        cache = None
        if self.cache_dir is not None:
            st = path.stat()
            key = hashlib.blake2b(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{start}|{step}|{self.window}|{size}"
                                  .encode(), digest_size=10).hexdigest()
            cache = self.cache_dir / f"{key}.npz"
            if cache.is_file():
                try:
                    with np.load(cache) as data:
                        return data["frames"], float(data["fps"])
                except (OSError, ValueError, KeyError, EOFError):
                    pass
        clip = read_clip(path, Sampling(frames=self.window, stride=step, start=start), size=(size, size))
        frames = clip.frames
        if len(frames) < self.window:  # a short video: hold the last frame
            frames = np.concatenate([frames, np.repeat(frames[-1:], self.window - len(frames), axis=0)])
        if cache is not None:
            from vcomp.io import atomic_file

            with atomic_file(cache) as tmp, open(tmp, "wb") as fh:
                np.savez(fh, frames=frames, fps=np.float32(clip.fps))
        return frames, float(clip.fps)

    def clip(self, req: Request, rng: np.random.Generator) -> RawClip:
        frames, fps = self._frames(req.index, req.size)
        if req.frames < len(frames):
            offset = int(rng.integers(0, len(frames) - req.frames + 1))
            frames = frames[offset:offset + req.frames]
        elif req.frames > len(frames):
            raise InputError(f"asked for {req.frames}-frame clips from a source cut into {len(frames)}-frame clips")
        frames = np.ascontiguousarray(frames)
        caption = self.videos[self.clips[req.index][0]][1]
        if not req.conditions:
            return RawClip(frames, caption)
        from vcomp.conditions.motion import motion_from_frames
        from vcomp.conditions.style import colour_stats_embedding

        arrays = user_path_conditions(frames)
        arrays["motion"] = motion_from_frames(frames, fps=fps)
        arrays["image"] = frames[0].transpose(2, 0, 1) / np.float32(255)
        arrays["style"] = colour_stats_embedding(frames[0])
        arrays["mask"] = random_mask(rng, req.frames, req.size)
        return RawClip(frames, caption, ConditionSet(**arrays, meta={"fps": fps, "source": "folder"}))


# ---------------------------------------------------------------- dataset + collate


class TrainDataset(torch.utils.data.Dataset):
    """`dataset[request]` -> one training item (CPU tensors):

        video       float32 [3, T, S, S] in [-1, 1]
        caption     str
        conditions  {UNet name: [C, T, S, S] or [C, S, S]}   (stage 2 only)
        style       float32 [1, D]                            (stage 2 only)
    """

    def __init__(self, source, adapter):
        self.source, self.adapter = source, adapter

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, req: Request) -> dict:
        rng = np.random.default_rng(req.seed)
        raw = self.source.clip(req, rng)
        video = torch.from_numpy(raw.frames).permute(3, 0, 1, 2).float().div_(127.5).sub_(1.0)
        item = {"video": video, "caption": raw.caption}
        if raw.focus is not None:
            item["focus"] = torch.from_numpy(np.ascontiguousarray(raw.focus, np.float32)).permute(1, 0, 2, 3)
        if raw.conditions is not None:
            inputs = self.adapter.prepare(raw.conditions, req.frames, (req.size, req.size), source_frames=raw.frames)
            item["conditions"] = {k: v[0] for k, v in inputs.conditions.items()}
            item["style"] = inputs.style[0] if inputs.style is not None else None
        return item


def collate(items: list[dict]) -> dict:
    """Stack a list of items into a batch (captions stay a list)."""
    batch = {"video": torch.stack([it["video"] for it in items]), "caption": [it["caption"] for it in items]}
    if all("focus" in it for it in items):
        batch["focus"] = torch.stack([it["focus"] for it in items])
    if "conditions" in items[0]:
        batch["conditions"] = {k: torch.stack([it["conditions"][k] for it in items]) for k in items[0]["conditions"]}
        styles = [it.get("style") for it in items]
        batch["style"] = torch.stack(styles) if all(s is not None for s in styles) else None
    return batch


def worker_init(_worker_id: int) -> None:
    """DataLoader workers: one thread each (the main process owns the cores), and deaf to SIGTERM.

    Why SIGTERM: a worker shares the trainer's command line, so `pkill -f "vcomp train"` or a
    signal to the process group reaches it too; it died, and the trainer stopped with an internal
    error and no checkpoint. The main process handles SIGTERM (checkpoint, then exit) and shuts its
    workers down itself; a worker whose parent is gone exits on its own (torch's watchdog)."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    torch.set_num_threads(1)
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:  # pragma: no cover
        pass


class StepSampler(torch.utils.data.Sampler):
    """Yields each step's list of `Request`s from `start` to `stop` (a DataLoader batch_sampler)."""

    def __init__(self, plan, start: int, stop: int):
        self.plan, self.start, self.stop = plan, int(start), int(stop)

    def __iter__(self):
        for step in range(self.start, self.stop):
            yield self.plan(step)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)
