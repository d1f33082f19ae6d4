"""The one training loop, for every method.

It knows nothing about any method: it builds views with the method's recipe, calls the
method's forward for a loss, steps the optimiser on the configured schedules, calls the
method's hooks (``on_step`` after every step, ``on_epoch_end`` after every epoch), logs and
checkpoints every epoch. What is measured during training besides the loss is a
:class:`Monitor` handed in by the caller (the CLI's is ``selfsup.eval.online.OnlineKNN``), so
this layer does not depend on the evaluations.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import yaml
from torch import nn
from tqdm import tqdm

from selfsup.config import ConfigError, PretrainConfig
from selfsup.core.comm import broadcast_object, gather_objects
from selfsup.core.environment import device_description, software_versions
from selfsup.data import DatasetSplits, cap, open_dataset
from selfsup.methods import RunInfo, build_method
from selfsup.methods.base import effective_rank, embedding_std
from selfsup.train import checkpoint as ckpt
from selfsup.train.compiled import CompiledForward
from selfsup.train.distributed import DistInfo, init_distributed, wrap_model
from selfsup.train.optim import build_optimizer
from selfsup.train.progress import StepClock
from selfsup.train.schedule import cosine_value, learning_rate
from selfsup.train.sinks import open_sink
from selfsup.views.contrastive_crop import build_crop
from selfsup.views.recipes import make_views, view_specs
from selfsup.views.samplers import CropSampler


@dataclass
class Precision:
    """Autocast dtype (None = full precision) and whether a gradient scaler is needed."""

    dtype: torch.dtype | None
    scaler: bool


def choose_precision(amp: str, device: torch.device, dtype: str = "float32") -> Precision:
    """``auto``: bf16 on GPUs that support it, else fp16 with loss scaling; off on CPU and for
    float64 weights."""
    if amp == "off" or (amp == "auto" and (device.type != "cuda" or dtype == "float64")):
        return Precision(None, False)
    if amp == "fp16" or (amp == "auto" and not torch.cuda.is_bf16_supported()):
        if device.type != "cuda":
            raise ConfigError("train.amp=fp16 needs a CUDA device; use bf16 or off on CPU")
        return Precision(torch.float16, True)
    return Precision(torch.bfloat16, False)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Monitor(Protocol):
    """Measures the run while it trains: ``after_epoch`` returns values for the epoch's record
    (``metrics.jsonl``) and ``after_fit`` values for the final result. Called on every rank."""

    def after_epoch(self, trainer: Trainer) -> dict[str, Any]: ...

    def after_fit(self, trainer: Trainer) -> dict[str, Any]: ...


class Trainer:
    """Pre-trains ``cfg.method`` on ``cfg.data.path``; see :meth:`fit`. ``monitor``: what to
    measure after every epoch and at the end (None: nothing but the training logs)."""

    def __init__(self, cfg: PretrainConfig, dist: DistInfo | None = None, monitor: Monitor | None = None) -> None:
        self.cfg = cfg
        self.monitor = monitor
        self.dist = dist or init_distributed(cfg.train.device)
        self.out = Path(cfg.train.out_dir)
        t = cfg.train
        per_rank, rem = divmod(t.batch_size, self.dist.world_size * t.accum_steps)
        if rem or per_rank < 1:
            raise ConfigError(
                f"train.batch_size {t.batch_size} must be divisible by world size "
                f"{self.dist.world_size} x accum_steps {t.accum_steps}"
            )
        self.micro_batch = per_rank
        seed_everything(t.seed + self.dist.rank)
        d = cfg.data
        splits = open_dataset(
            d.path, load_size=d.load_size, memory_limit_gb=d.memory_limit_gb, num_workers=d.num_workers,
            max_image_pixels=d.max_image_pixels, masks=d.masks or None, skip_missing=d.skip_missing,
            decode_device=self.dist.device if d.decode == "device" else None,
        )
        if self.dist.is_main and splits.train.num_without_mask:
            print(f"selfsup: left out {splits.train.num_without_mask} training image(s) without a usable mask "
                  f"in {d.masks}", file=sys.stderr)
        self.splits = DatasetSplits(
            cap(splits.train, d.max_images, t.seed),
            None if splits.test is None else cap(splits.test, d.max_test_images, t.seed),
        )
        n_micro = self.splits.train.num_batches(per_rank, self.dist.world_size, drop_last=True)
        self.steps_per_epoch = n_micro // t.accum_steps
        if self.steps_per_epoch < 1:
            raise ConfigError(
                f"train.batch_size {t.batch_size} is larger than the dataset "
                f"({len(self.splits.train)} images)"
            )
        self.total_steps = t.epochs * self.steps_per_epoch

        self.run = RunInfo(len(self.splits.train), self.steps_per_epoch, t.epochs)
        dtype = torch.float64 if t.dtype == "float64" else torch.float32
        self.method = build_method(cfg, self.run).to(self.dist.device, dtype)
        self.specs = view_specs(cfg.views, type(self.method).recipe)
        if t.channels_last:
            self.method = self.method.to(memory_format=torch.channels_last)
        self.method, self.model = wrap_model(self.method, self.dist, t.sync_bn)
        self.forward = CompiledForward(self.model) if t.compile else self.model  # what a step calls
        self.optimizer = build_optimizer(self.method, cfg.optim)
        self.precision = choose_precision(t.amp, self.dist.device, t.dtype)
        self.scaler = torch.amp.GradScaler(enabled=self.precision.scaler)
        self.view_gen = torch.Generator().manual_seed(t.seed * 1000 + self.dist.rank)
        self.crop = build_crop(cfg.views, len(self.splits.train), t.eval_batch_size)
        self.epoch = 0  # completed epochs
        self.step = 0  # completed optimiser steps
        self.epoch_step = 0  # completed optimiser steps of the running epoch
        self.epoch_sums: dict[str, float] = {}  # the running epoch's logged values, summed
        self.last_saved: tuple[int, int] | None = None  # (epoch, step) of the last checkpoint
        self.last_save_time = time.monotonic()
        self.sink = None  # TensorBoard (train.log), opened by fit on rank 0

    # ---------------------------------------------------------------- state
    def state_dict(self, rng_per_rank: list[Any] | None = None) -> dict[str, Any]:
        """The whole training state; ``rng_per_rank``: every rank's random streams (default:
        this process's only)."""
        rng = rng_per_rank or [ckpt.rng_state(self.view_gen)]
        return {
            "config": self.cfg.to_dict(),
            "run": dataclasses.asdict(self.run),
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "epoch_step": self.epoch_step,
            "epoch_sums": dict(self.epoch_sums),
            "metrics_bytes": self.metrics_path.stat().st_size if self.metrics_path.is_file() else 0,
            "rng": rng[0],
            "rng_per_rank": rng,
            "crop": {} if self.crop is None else self.crop.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.epoch_step, self.epoch_sums = state.get("epoch_step", 0), dict(state.get("epoch_sums", {}))
        per_rank = state.get("rng_per_rank", [state["rng"]])
        own = per_rank[self.dist.rank] if len(per_rank) == self.dist.world_size else state["rng"]
        ckpt.set_rng_state(own, self.view_gen)
        if self.crop is not None and state.get("crop"):
            self.crop.load_state_dict(state["crop"])
        self.last_saved = (self.epoch, self.step)

    def save_checkpoint(self) -> None:
        """Write ``last.pt`` (every rank calls this: the ranks' random streams are gathered)."""
        rng = gather_objects(ckpt.rng_state(self.view_gen))
        if self.dist.is_main:
            ckpt.save_atomic(self.state_dict(rng), self.checkpoint_path)
        self.last_saved = (self.epoch, self.step)
        self.last_save_time = time.monotonic()

    def checkpoint_due(self, log_now: bool) -> bool:
        """A mid-epoch checkpoint after this step: every ``train.checkpoint_every`` steps, or at a
        log step once ``train.checkpoint_minutes`` have passed (rank 0's clock decides)."""
        t = self.cfg.train
        if t.checkpoint_every and self.step % t.checkpoint_every == 0:
            return True
        if not (t.checkpoint_minutes and log_now):
            return False
        return bool(broadcast_object(time.monotonic() - self.last_save_time >= 60 * t.checkpoint_minutes))

    @property
    def metrics_path(self) -> Path:
        return self.out / "metrics.jsonl"

    @property
    def environment_path(self) -> Path:
        """``environment.json``: device, processes and software versions of the latest start (or resume)."""
        return self.out / "environment.json"

    @property
    def checkpoint_path(self) -> Path:
        return self.out / "last.pt"

    def log(self, record: dict[str, Any]) -> None:
        if self.dist.is_main:
            with ckpt.writing(self.metrics_path), open(self.metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            if self.sink is not None:
                self.sink.write(record)

    def non_finite(self, values: dict[str, float]) -> FloatingPointError:
        """The one-line error of a NaN / inf loss: the step, the logged terms, the last good checkpoint."""
        terms = ", ".join(f"{k} {v:.6g}" for k, v in values.items() if k not in ("lr", "weight_decay"))
        saved = (f"the last good checkpoint {self.checkpoint_path} (epoch {self.last_saved[0]}, step "
                 f"{self.last_saved[1]}) is unchanged: fix the cause (a lower optim.lr, optim.grad_clip), then "
                 "continue with --resume" if self.last_saved else "no checkpoint was written yet")
        return FloatingPointError(f"non-finite loss {values['loss']} at step {self.step} ({terms}); {saved}")

    # ---------------------------------------------------------------- loop
    def epoch_crop(self) -> CropSampler | None:
        """The crop sampler of the running epoch (``views.crop``); None: random-resized crops."""
        return None if self.crop is None else self.crop.for_epoch(self.epoch + 1)

    def lr_at(self, step: int) -> float:
        o = self.cfg.optim
        warmup = round(o.warmup_epochs * self.steps_per_epoch)
        return learning_rate(step, self.total_steps, warmup, o.lr, o.min_lr, o.warmup_start_factor, o.schedule,
                             o.poly_power)

    def weight_decay_at(self, step: int) -> float:
        o = self.cfg.optim
        if o.weight_decay_end is None:
            return o.weight_decay
        return cosine_value(step, self.total_steps, o.weight_decay, o.weight_decay_end)

    def set_schedules(self, step: int) -> float:
        """The learning rate (times each group's ``lr_scale``; ``fixed_lr`` groups keep
        ``optim.lr``) and the weight decay of the decayed groups at ``step``; returns the lr."""
        lr, wd = self.lr_at(step), self.weight_decay_at(step)
        for g in self.optimizer.param_groups:
            if not g.get("fixed_lr", False):  # a method's constant-lr group keeps optim.lr
                g["lr"] = lr * g.get("lr_scale", 1.0)
            if g.get("decay", False):
                g["weight_decay"] = wd
        return lr

    def train_step(self, micro_batches: list, monitor: bool = False) -> dict[str, torch.Tensor]:
        """One optimiser step over ``accum_steps`` micro-batches.

        ``monitor``: also log the collapse monitor (embedding std, effective rank) of the last
        micro-batch's ``StepOutput.embedding``.
        """
        lr = self.set_schedules(self.step)
        logs: dict[str, torch.Tensor] = {}
        n = len(micro_batches)
        for i, host in enumerate(micro_batches):
            batch = host.to(self.dist.device)  # non-blocking; sizes and index stay on the host for the
            crop = self.method.crop_sampler(self.epoch_crop())  # crop geometry: no copy back
            views = make_views(batch.images, host.sizes, self.specs, self.view_gen, crop, host.index, batch.maps)
            for v in views:
                v.index = batch.index
                if self.cfg.train.channels_last:
                    v.images = v.images.contiguous(memory_format=torch.channels_last)
            sync = i == n - 1 or not isinstance(self.model, nn.parallel.DistributedDataParallel)
            ctx = contextlib.nullcontext() if sync else self.model.no_sync()
            autocast = torch.autocast(
                self.dist.device.type, dtype=self.precision.dtype, enabled=self.precision.dtype is not None
            )
            with ctx, autocast:
                out = self.forward(views)
            with ctx:
                self.scaler.scale(out.loss / n).backward()
            logs["loss"] = logs.get("loss", 0) + out.loss.detach() / n
            for k, v in out.logs.items():
                logs[k] = logs.get(k, 0) + v.detach().float() / n
        if monitor and out.embedding is not None:
            logs["z_std"] = embedding_std(out.embedding)
            logs["z_eff_rank"] = effective_rank(out.embedding)
        self.method.after_backward(self.step)
        if self.cfg.optim.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.method.parameters(), self.cfg.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.method.on_step(self.step, self.total_steps)
        logs["lr"] = torch.tensor(lr)
        if self.cfg.optim.weight_decay_end is not None:
            logs["weight_decay"] = torch.tensor(self.weight_decay_at(self.step - 1))
        return logs

    def train_epoch(self) -> dict[str, float]:
        """Train the running epoch from its step ``epoch_step`` on (0, or where a checkpoint left it)."""
        t = self.cfg.train
        batches = self.splits.train.batches(
            self.micro_batch, shuffle=True, seed=t.seed, epoch=self.epoch,
            rank=self.dist.rank, world_size=self.dist.world_size, drop_last=True,
            window=self.cfg.data.sliding_window, start_batch=self.epoch_step * t.accum_steps,
        )
        bar = tqdm(
            total=self.steps_per_epoch, desc=f"epoch {self.epoch + 1}/{t.epochs}", file=sys.stderr,
            disable=not (self.dist.is_main and t.progress), dynamic_ncols=True, leave=False,
        )
        self.method.train()
        images_per_step = t.batch_size
        start = time.perf_counter()
        sums = self.epoch_sums
        pending: list = []
        first = done = self.epoch_step
        bar.update(first)
        clock, loss_text = StepClock(), "-"
        for batch in batches:
            pending.append(batch)
            if len(pending) < t.accum_steps:
                continue
            log_now = (done + 1) % t.log_every == 0 or done + 1 == self.steps_per_epoch
            logs = self.train_step(pending, monitor=log_now)
            pending = []
            done += 1
            self.epoch_step = done
            clock.tick()
            if log_now:
                values = {k: float(v) for k, v in logs.items()}  # one host sync per log interval
                if not math.isfinite(values["loss"]):
                    raise self.non_finite(values)
                for k, v in values.items():
                    sums[k] = sums.get(k, 0.0) + v
                sums["_n"] = sums.get("_n", 0) + 1
                elapsed = time.perf_counter() - start
                ips = (done - first) * images_per_step / elapsed
                loss_text = f"{values['loss']:.4f}"
                self.log({"epoch": self.epoch + 1, "step": self.step, **values, "img_per_s": ips})
            eta = time.strftime("%H:%M:%S", time.gmtime(clock.eta(self.total_steps - self.step)))
            bar.set_postfix(step=f"{self.step}/{self.total_steps}", loss=loss_text,
                            img_s=f"{images_per_step / max(clock.per_step, 1e-9):.0f}", eta=eta, refresh=False)
            bar.update(1)
            if done == self.steps_per_epoch:
                break
            if self.checkpoint_due(log_now):
                self.save_checkpoint()
        bar.close()
        elapsed = time.perf_counter() - start
        n = sums.pop("_n", 1)
        summary = {k: v / n for k, v in sums.items()}
        summary["img_per_s"] = (done - first) * images_per_step / elapsed
        summary["epoch_time_s"] = elapsed
        self.epoch_step, self.epoch_sums = 0, {}
        return summary

    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train to ``train.epochs``; return the final metrics (also written to the run folder)."""
        t = self.cfg.train
        if resume:
            if not self.checkpoint_path.is_file():
                raise ConfigError(f"--resume: no checkpoint to resume at {self.checkpoint_path}")
            state = ckpt.load(self.checkpoint_path)
            self.load_state_dict(state)
            if self.dist.is_main and self.metrics_path.is_file():  # drop what was logged after the checkpoint
                with ckpt.writing(self.metrics_path), open(self.metrics_path, "r+b") as f:
                    f.truncate(state.get("metrics_bytes", f.seek(0, 2)))
        if self.dist.is_main:
            with ckpt.writing(self.out / "config.yaml"):
                self.out.mkdir(parents=True, exist_ok=True)
                ckpt.remove_stale_temporaries(self.checkpoint_path)
                (self.out / "config.yaml").write_text(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
            with ckpt.writing(self.environment_path):
                self.environment_path.write_text(json.dumps({
                    **device_description(self.dist.device), "world_size": self.dist.world_size,
                    "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "resumed": resume,
                    "versions": software_versions()}, indent=2))
            self.sink = open_sink(t.log, self.out, purge_step=self.step if resume else None)
        if self.step == 0:
            self.method.on_fit_start(self.splits.train, self.cfg.views, self.dist.device)
        if self.dist.is_main and self.epoch == 0:
            print(
                f"selfsup: {self.cfg.method} on {len(self.splits.train)} images, "
                f"{self.steps_per_epoch} steps/epoch x {t.epochs} epochs, batch {t.batch_size}, "
                f"{self.dist.world_size} process(es) on {self.dist.device}",
                file=sys.stderr,
            )
        while self.epoch < t.epochs:
            summary = self.train_epoch()
            self.epoch += 1
            # epoch-end state changes come before the checkpoint, so a resumed run has them
            self.method.on_epoch_end(self.epoch)
            if self.crop is not None and self.crop.due(self.epoch, t.epochs):
                self.crop.update(self.method.backbone, self.splits.train, self.dist.device)
            record: dict[str, Any] = {"epoch": self.epoch, "step": self.step, "summary": summary}
            measured = self.monitor.after_epoch(self) if self.monitor is not None else {}
            record.update(measured)
            self.log(record)
            self.save_checkpoint()
            if self.dist.is_main:
                extra = "".join(f", {k} {v:.4f}" for k, v in measured.items())
                print(f"epoch {self.epoch}/{t.epochs}: loss {summary.get('loss', float('nan')):.4f}, "
                      f"{summary['img_per_s']:.0f} img/s{extra}", file=sys.stderr)
        return self.finish()

    def finish(self) -> dict[str, Any]:
        """The monitor's final measurements and the exported backbone (``backbone.pth``)."""
        result: dict[str, Any] = {"method": self.cfg.method, "epochs": self.epoch, "steps": self.step}
        if self.monitor is not None:
            result.update(self.monitor.after_fit(self))
        if self.dist.is_main:
            with ckpt.writing(self.out / "backbone.pth"):
                torch.save(self.method.backbone.export_state_dict(), self.out / "backbone.pth")
        if self.sink is not None:
            self.sink.close()
            self.sink = None
        return result
