"""The training loop: :func:`fit` (**contract**) trains one :class:`TrainConfig` into a run folder.

Per optimizer step ``t`` (0-based, ``T`` in all): lambda of annealed activations
``= LambdaSchedule.value(t, T, steps_per_epoch)``; learning rate ``= cosine(t + 1)`` with linear
warmup from ``warmup_lr_init`` (timm ``CosineLRScheduler``, ``step_update``); forward/backward of
``accum_steps`` micro-batches of the (Mixup/CutMix-mixed) batch under :class:`TrainingLoss`
(bf16 autocast when ``amp``); non-finite loss -> :class:`TrainingError`;
optional grad-norm clip; optimizer step; EMA update. After each epoch: evaluation (raw and EMA),
``log.csv``, TensorBoard, ``last.*`` (and ``best.safetensors`` when top-1 improved).

Data order is a function of ``(seed, epoch)`` (sampler and loader generator reseeded per epoch),
and every RNG state is checkpointed, so a resumed run reproduces an uninterrupted one bit for bit
on CPU: from any step with ``workers=0``; with worker processes a run stopped mid-epoch keeps
the checkpoint of its last finished epoch and redoes the rest.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from reparam.app.dataspec import absolute_spec
from reparam.app.folders import describe_folder, exclusive_lock
from reparam.app.train import distributed
from reparam.app.train.optim_factory import create_optimizer
from reparam.app.train.recipe import TrainConfig
from reparam.app.train.setup import (
    TrainingLoss,
    build_data,
    build_ema,
    build_mixup,
    build_model,
    build_scheduler,
    lambda_schedule,
)
from reparam.app.train.state import (
    BEST_WEIGHTS,
    LAST_STATE,
    TrainState,
    check_training_state,
    get_rng_state,
    is_run_folder,
    load_training_state,
    remove_run_files,
    save_training_state,
    set_rng_state,
    write_log_csv,
)
from reparam.errors import CheckpointError, Terminated, TrainingError
from reparam.extras import MissingExtraError, require
from reparam.files import first_line, non_finite_tensors, read_json, save_weights, write_json
from reparam.models.annealed import annealing_finished, set_lambda

__all__ = ["check_new_run_folder", "fit"]

log = logging.getLogger(__name__)
LOG_FIELDS = [
    "epoch",
    "step",
    "lr",
    "train_loss",
    "train_top1",
    "val_loss",
    "top1",
    "top1_ema",
    "train_images_per_s",
    "seconds",
]


class _StopFlag:
    """SIGTERM / SIGINT set a flag; the loop saves at the next step boundary (or right after an
    evaluation, even the last one) and returns. A second signal interrupts at once
    (:class:`KeyboardInterrupt` or :class:`Terminated`; the previous checkpoint stays intact)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        with contextlib.suppress(ValueError):  # not the main thread: no handlers
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None:  # a second signal: stop now, without saving
            raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def fit(config: TrainConfig, progress: bool = True) -> dict[str, Any]:
    """Train ``config`` into ``config.out`` and return the metrics (``metrics.json``'s content).

    With ``config.resume`` the run continues from ``out/last.state.pt``. When stopped early
    (a signal at any point, the last evaluation included, or ``stop_after_steps``) no metrics
    file is written and the result is ``{"interrupted": true, "signal": number or None,
    "resumable": whether a checkpoint exists, "stopped": where it stopped and what it saved}``.
    Raises :class:`TrainingError` on a non-finite loss, saying which checkpoint is kept, and on
    resuming with data whose image counts or class names differ from the run's ``config.json``.
    """
    joined = not torch.distributed.is_initialized()
    info = distributed.setup(config.device)
    lock = exclusive_lock(config.out) if info.is_main else contextlib.nullcontext()
    try:
        with lock:
            return _Trainer(config, info, progress).run()
    finally:
        if joined:  # leave a process group the caller created alone
            distributed.cleanup()


class _Trainer:
    def __init__(self, config: TrainConfig, info: distributed.DistInfo, progress: bool):
        config = config.model_copy()  # resolved below; the caller's object stays as given
        self.info, self.progress = info, progress
        self.out = Path(config.out)
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        torch.manual_seed(config.seed)  # identical model init on every rank
        config.data = absolute_spec(config.data)  # recorded so: the same files from any folder
        self.data = build_data(config)
        if config.resume:
            self._check_same_data(config.data)
        if config.num_classes is None:
            config.num_classes = self.data.num_classes
        elif config.num_classes != self.data.num_classes:
            raise TrainingError(
                f"num_classes={config.num_classes} but data {config.data!r} has "
                f"{self.data.num_classes} classes"
            )
        config.lr = config.resolved_lr
        self.config = config
        if info.is_main:
            for warning in config.execution_warnings():
                log.warning(warning)
        self.model = build_model(config, info.device, info.distributed)
        self.optimizer = create_optimizer(self.model, config)
        per_rank = config.batch_size // info.world_size
        if per_rank * info.world_size != config.batch_size:
            raise TrainingError(
                f"batch_size {config.batch_size} is not divisible by the "
                f"{info.world_size} processes"
            )
        if per_rank % config.accum_steps:
            raise TrainingError(
                f"per-process batch {per_rank} is not divisible by accum_steps {config.accum_steps}"
            )
        self.mixup = build_mixup(config)
        if self.mixup is not None and per_rank % 2:
            raise TrainingError(
                f"mixup/cutmix pair each image with another of its batch: the per-process batch "
                f"must be even, got {per_rank}"
            )
        self.loss = TrainingLoss(config.loss, config.label_smoothing)
        self.sampler = distributed.ResumableSampler(self.data.train, info, config.seed, per_rank)
        self.loader_generator = torch.Generator()
        self.loader = DataLoader(
            self.data.train,
            batch_size=per_rank,
            sampler=self.sampler,
            drop_last=True,
            num_workers=config.workers,
            generator=self.loader_generator,
            pin_memory=info.device.type == "cuda",
            worker_init_fn=_seed_worker,
        )
        self.steps_per_epoch = len(self.sampler) // per_rank
        if self.steps_per_epoch == 0:
            raise TrainingError(
                f"training set of {len(self.data.train)} images is smaller than one batch of "
                f"{config.batch_size}; lower --batch-size (to {len(self.data.train)} at most) or "
                "use more images"
            )
        if config.warmup_epochs >= config.epochs:
            log.warning(
                "warmup_epochs %g >= epochs %d: the whole run is learning-rate warm-up and the "
                "rate never decays (expect poor top-1); train for more epochs or lower the "
                "recipe's warmup_epochs",
                config.warmup_epochs,
                config.epochs,
            )
        self.total_steps = self.steps_per_epoch * config.epochs
        self.scheduler = build_scheduler(
            self.optimizer, config, self.steps_per_epoch, self.total_steps
        )
        self.ema = build_ema(self.model, config)
        self.anneal = lambda_schedule(self.model, config)
        self.train_model: nn.Module = self.model
        if info.distributed:
            ids = [info.device.index] if info.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if config.compile:
            self.train_model = torch.compile(self.train_model)
        self.state = TrainState()
        self.saved: tuple[int, int] | None = None  # (global_step, finished epochs) of last.*
        self.writer = None

    # ------------------------------------------------------------------------------- run
    def run(self) -> dict[str, Any]:
        config, info = self.config, self.info
        torch.manual_seed(config.seed + info.rank)  # augmentation / dropout streams per rank
        random.seed(config.seed + info.rank)
        np.random.seed(config.seed + info.rank)
        if config.resume:
            self._restore()
        else:
            self._start_folder()
        if info.is_main:
            self.writer = _event_writer(self.out, self.state.global_step)
        session_steps, stopped = 0, False
        with _StopFlag() as stop:
            while self.state.epoch < config.epochs:
                session_steps, stopped = self._train_epoch(stop, session_steps)
                if stopped:
                    saved = self._save_stopped()
                    break
                self._end_epoch()  # a signal during evaluation is seen right after it
                finished = self.state.epoch == config.epochs
                if self._should_stop(stop, None if finished else session_steps):
                    stopped, saved = True, f"saved {self.out}/last.*"
                    break
        if self.writer is not None:
            self.writer.close()
        if stopped:
            why = (
                signal.Signals(stop.signal).name
                if stop.signal
                else f"stop_after_steps={config.stop_after_steps}"
            )
            return {
                "interrupted": True,
                "global_step": self.state.global_step,
                "epoch": self.state.epoch,
                "signal": stop.signal,
                "resumable": self.saved is not None,
                "stopped": f"stopped by {why} at step {self.state.global_step} "
                f"({self._position()}); {saved}",
            }
        metrics = self._metrics()
        if info.is_main:
            write_json(metrics, self.out / "metrics.json")
        distributed.barrier(info)
        return metrics

    def _position(self) -> str:
        """Where the run stands, in words: ``after epoch 2`` or ``in epoch 3, batch 5``."""
        if self.state.batch == 0 and self.state.epoch:
            return f"after epoch {self.state.epoch}"
        return f"in epoch {self.state.epoch + 1}, batch {self.state.batch}"

    def _save_stopped(self) -> str:
        """Save a run stopped mid-epoch and say what was kept. Loader workers draw augmentation
        from streams that cannot be resumed mid-epoch, so with ``workers > 0`` the checkpoint of
        the last finished epoch is kept instead: the resumed run redoes this epoch exactly."""
        if not self.config.workers:
            self._save_last()
            return f"saved {self.out}/last.*"
        if self.saved is None:
            return "nothing saved (with loader workers a run saves at epoch ends, none had ended)"
        return (
            f"kept the checkpoint of epoch {self.state.epoch} (with loader workers a run resumes "
            f"at an epoch boundary, so its {self.state.batch} steps in this epoch will be redone)"
        )

    def _start_folder(self) -> None:
        """Refuse (on every rank) to start in a folder that holds files (see
        :func:`check_new_run_folder`); rank 0 removes the files a run writes (other files stay)
        and writes ``config.json``."""
        check_new_run_folder(self.out, self.config.force)
        distributed.barrier(self.info)  # every rank has looked before rank 0 writes
        if self.info.is_main:
            remove_run_files(self.out)
            self.out.mkdir(parents=True, exist_ok=True)
            write_json({**self.config.to_dict(), **self._run_info()}, self.out / "config.json")

    def _run_info(self) -> dict[str, Any]:
        """What ``config.json`` records beside the recipe (:data:`RUN_INFO_KEYS`): the class
        names, image counts and preprocessing that the data gave the model, and the scale file
        it started from (path and SHA-256, for provenance only: the checkpoints hold the scales)."""
        info: dict[str, Any] = {
            "class_names": list(self.data.class_names),
            "data_info": self._data_info(),
            "preprocessing": self.config.preprocessing.to_dict(),
        }
        scales = self.config.model_kwargs.get("scales")
        if isinstance(scales, str) and Path(scales).is_file():
            digest = hashlib.sha256(Path(scales).read_bytes()).hexdigest()
            info["scales_file"] = {"path": scales, "sha256": digest}
        return info

    def _data_info(self) -> dict[str, int]:
        return {"train_images": len(self.data.train), "val_images": len(self.data.val)}

    def _check_same_data(self, spec: str) -> None:
        """Refuse to resume on data whose image counts or class names differ from those the run
        recorded at its start (its schedule and classifier were built for them)."""
        path = self.out / "config.json"
        recorded = read_json(path) if path.is_file() else {}
        if absolute_spec(str(recorded.get("data"))) != spec:
            return  # another data spec: refused as a config change when the state is restored
        counts, names = self._data_info(), list(self.data.class_names)
        changes = [
            f"{key} {count} -> {counts.get(key)}"
            for key, count in recorded.get("data_info", {}).items()
            if counts.get(key) != count
        ]
        if recorded.get("class_names", names) != names:
            changes.append(_names_change(recorded["class_names"], names))
        if changes:
            raise TrainingError(
                f"{self.out}: the data {spec} changed since the run started "
                f"({'; '.join(changes)}); a resumed run needs the data it started with: restore "
                "it, or train afresh in another run folder"
            )

    # ----------------------------------------------------------------------------- epoch
    def _should_stop(self, stop: _StopFlag, session_steps: int | None) -> bool:
        """A signal arrived (on any rank) or this session's step budget is spent (not checked
        when ``session_steps`` is ``None``: the run has finished its last epoch)."""
        budget = None if session_steps is None else self.config.stop_after_steps
        local = stop.signal is not None or (budget is not None and session_steps >= budget)
        return distributed.reduce_sum(self.info, [float(local)])[0] > 0

    def _train_epoch(self, stop: _StopFlag, session_steps: int) -> tuple[int, bool]:
        """Train the rest of the current epoch; ``(session_steps, stopped mid-epoch)``."""
        config, info = self.config, self.info
        self.sampler.set_epoch(self.state.epoch)
        self.sampler.skip_batches = self.state.batch
        self.loader_generator.manual_seed(config.seed * 100_003 + self.state.epoch)
        self.model.train()
        if self.state.batch == 0:
            self.state.epoch_sums = [0.0, 0, 0]  # loss sum (per step), correct, seen
        bar = _progress_bar(
            self.progress and info.is_main,
            self.steps_per_epoch,
            self.state.batch,
            f"epoch {self.state.epoch + 1}/{config.epochs}",
        )
        start = time.perf_counter()
        stopped = False
        for images, labels in self.loader:
            step_loss, step_correct = self._train_step(images, labels)
            self.state.epoch_sums[0] += step_loss
            self.state.epoch_sums[1] += step_correct
            self.state.epoch_sums[2] += labels.numel()
            self.state.images += labels.numel() * info.world_size
            self.state.batch += 1
            self.state.global_step += 1
            session_steps += 1
            bar.set_postfix(
                loss=f"{step_loss:.3f}",
                lr=f"{self.optimizer.param_groups[0]['lr']:.3g}",
                refresh=False,
            )
            bar.update(1)
            if self.state.global_step % config.log_every == 0 and self.writer is not None:
                self.writer.add_scalar("train/loss", step_loss, self.state.global_step)
                self.writer.add_scalar(
                    "train/lr", self.optimizer.param_groups[0]["lr"], self.state.global_step
                )
            if self.state.batch < self.steps_per_epoch and self._should_stop(stop, session_steps):
                stopped = True
                break
        bar.close()
        elapsed = time.perf_counter() - start
        self.state.train_seconds += elapsed
        self.state.seconds += elapsed
        if not stopped:
            loss, correct, seen = distributed.reduce_sum(info, self.state.epoch_sums)
            self._epoch_train = {
                "train_loss": loss / info.world_size / self.steps_per_epoch,
                "train_top1": correct / max(1, seen),
            }
        return session_steps, stopped

    def _train_step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
        config, device = self.config, self.info.device
        lam = None
        if self.anneal is not None:
            lam = self.anneal.value(self.state.global_step, self.total_steps, self.steps_per_epoch)
            set_lambda(self.model, lam)
        self.scheduler.step_update(self.state.global_step + 1)
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        targets = labels
        if self.mixup is not None:
            images, targets = self.mixup(images, labels)
        if config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        self.optimizer.zero_grad(set_to_none=True)
        loss_value, correct = 0.0, 0
        chunks = list(
            zip(*(t.chunk(config.accum_steps) for t in (images, targets, labels)), strict=True)
        )
        for index, (x, target, y) in enumerate(chunks):
            sync = index == len(chunks) - 1 or not isinstance(
                self.train_model, nn.parallel.DistributedDataParallel
            )
            context = contextlib.nullcontext() if sync else self.train_model.no_sync()
            with context, torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.amp):
                logits = self.train_model(x)
                loss = self.loss(logits, target)
            (loss / len(chunks)).backward()
            loss_value += loss.item() / len(chunks)
            correct += int((logits.argmax(1) == y).sum())
        if not math.isfinite(loss_value):
            raise TrainingError(
                f"loss is {loss_value} at step {self.state.global_step} (epoch "
                f"{self.state.epoch + 1}, batch {self.state.batch + 1}); training stopped, "
                f"{self._kept()} (lower the lr, enable grad_clip, or check the data)"
            )
        if config.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model, step=self.state.global_step + 1)
            if lam is not None:  # lambda is a schedule value, not a weight to average
                set_lambda(self.ema.module, lam)
        return loss_value, correct

    def _check_finite(self) -> None:
        """Refuse to go on (and to save) once a weight or BN statistic is NaN or inf: the last
        checkpoint, written before the divergence, stays intact."""
        modules = {"model": self.model} | ({"EMA": self.ema.module} if self.ema else {})
        for what, module in modules.items():
            bad = non_finite_tensors(module.state_dict())
            if bad:
                shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
                raise TrainingError(
                    f"training diverged by step {self.state.global_step} (epoch "
                    f"{self.state.epoch + 1}): {len(bad)} {what} tensor(s) hold NaN or inf "
                    f"({shown}); nothing was saved, {self._kept()} (lower the lr, enable "
                    "grad_clip, or check the data)"
                )

    def _kept(self) -> str:
        """What a run that must stop now leaves behind, in words."""
        if self.saved is None:
            return "no checkpoint had been written yet (nothing to resume)"
        step, epoch = self.saved
        return (
            f"the last good checkpoint in {self.out} (step {step}, {epoch} epoch(s) finished) "
            "is intact"
        )

    def _end_epoch(self) -> None:
        self._check_finite()
        info = self.info
        start = time.perf_counter()
        val_loss, top1 = self._evaluate(self.model)
        top1_ema = self._evaluate(self.ema.module)[1] if self.ema is not None else None
        self.state.seconds += time.perf_counter() - start
        self.state.epoch += 1
        self.state.batch = 0
        row = {
            "epoch": self.state.epoch,
            "step": self.state.global_step,
            "lr": self.optimizer.param_groups[0]["lr"],
            **self._epoch_train,
            "val_loss": val_loss,
            "top1": top1,
            "top1_ema": top1_ema,
            "train_images_per_s": self.state.images / max(self.state.train_seconds, 1e-9),
            "seconds": self.state.seconds,
        }
        self.state.rows.append(row)
        candidates = [(top1, "raw")] + ([(top1_ema, "ema")] if top1_ema is not None else [])
        best, source = max(candidates, key=lambda c: c[0])
        # only a checkpoint that fuses may become best: annealed models at lambda = 1
        improved = best > self.state.best_top1 and annealing_finished(self.model)
        if improved and info.is_main:
            module = self.model if source == "raw" else self.ema.module
            save_weights(
                module.state_dict(),
                self.out / BEST_WEIGHTS,
                metadata={"epoch": str(self.state.epoch), "source": source},
            )
        if improved:
            self.state.best_top1, self.state.best_source = best, source
            self.state.best_epoch = self.state.epoch
        # the resume point before the log: a failed write (full disk) leaves log.csv matching
        # the checkpoint that is still there
        self._save_last()
        if info.is_main:
            write_log_csv(self.state.rows, LOG_FIELDS, self.out / "log.csv")
            for key in ("train_loss", "train_top1", "val_loss", "top1", "top1_ema"):
                if row[key] is not None and self.writer is not None:
                    self.writer.add_scalar(f"epoch/{key}", row[key], self.state.epoch)

    @torch.no_grad()
    def _evaluate(self, model: nn.Module) -> tuple[float, float]:
        """(mean loss, top-1) over the validation set, sharded over ranks and summed exactly."""
        info, config = self.info, self.config
        shard = Subset(self.data.val, range(info.rank, len(self.data.val), info.world_size))
        loader = DataLoader(
            shard,
            batch_size=max(1, config.batch_size // info.world_size),
            num_workers=config.workers,
        )
        was_training = model.training
        model.eval()
        loss_sum, correct, count = 0.0, 0, 0
        for images, labels in loader:
            images, labels = images.to(info.device), labels.to(info.device)
            if config.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(info.device.type, dtype=torch.bfloat16, enabled=config.amp):
                logits = model(images).float()
            loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
            correct += int((logits.argmax(1) == labels).sum())
            count += labels.numel()
        model.train(was_training)
        loss_sum, correct, count = distributed.reduce_sum(info, [loss_sum, correct, count])
        return loss_sum / max(count, 1), correct / max(count, 1)

    # ------------------------------------------------------------------------ checkpoints
    def _components(self) -> dict[str, Any]:
        """What a checkpoint carries besides the weights and :class:`TrainState`: every part
        with ``state_dict`` / ``load_state_dict`` (``None`` for EMA when it is off)."""
        ema = self.ema.module if self.ema is not None else None
        return {"optimizer": self.optimizer, "scheduler": self.scheduler, "ema": ema}

    def _save_last(self) -> None:
        self._check_finite()
        rng = distributed.all_gather_objects(self.info, get_rng_state())
        if self.info.is_main:
            checkpoint = {
                **self.state.to_dict(),
                **{
                    name: None if part is None else part.state_dict()
                    for name, part in self._components().items()
                },
                "world_size": self.info.world_size,
                "config": self.config.to_dict(),
                "rng": rng,
            }
            save_training_state(self.out, self.model.state_dict(), checkpoint)
        self.saved = (self.state.global_step, self.state.epoch)
        distributed.barrier(self.info)

    def _restore(self) -> None:
        weights, checkpoint = load_training_state(self.out)
        check_training_state(checkpoint, str(self.out / LAST_STATE))
        saved = checkpoint["config"]  # runs may have recorded a relative data path
        changed = self.config.changes_from({**saved, "data": absolute_spec(str(saved.get("data")))})
        if changed:
            raise CheckpointError(f"{self.out}: cannot resume with a different config ({changed})")
        self.model.load_state_dict(weights)
        for name, part in self._components().items():
            if part is not None:
                try:
                    part.load_state_dict(checkpoint[name])
                except (KeyError, TypeError, ValueError, RuntimeError) as err:
                    raise CheckpointError(
                        f"{self.out / LAST_STATE}: entry {name!r} does not fit this run's "
                        f"{name} ({first_line(err)})"
                    ) from None
        self.state = TrainState.from_dict(checkpoint)
        self.saved = (self.state.global_step, self.state.epoch)
        if checkpoint["world_size"] == self.info.world_size:
            set_rng_state(checkpoint["rng"][self.info.rank])
        else:
            log.warning(
                "resuming with %d processes (saved with %d): RNG streams restart",
                self.info.world_size,
                checkpoint["world_size"],
            )
        if self.state.batch and self.config.workers:
            log.warning(
                "mid-epoch resume with workers>0: augmentation differs from an "
                "uninterrupted run for the rest of this epoch"
            )

    def _metrics(self) -> dict[str, Any]:
        last = self.state.rows[-1]
        metrics = {
            "model": self.config.model,
            "data": self.config.data,
            "epochs": self.state.epoch,
            "steps": self.state.global_step,
            "top1": last["top1"],
            "val_loss": last["val_loss"],
            "best_top1": self.state.best_top1,
            "best_source": self.state.best_source,
            "best_epoch": self.state.best_epoch,  # the epoch of best.safetensors
            "train_loss": last["train_loss"],
            "train_top1": last["train_top1"],
            "train_images_per_s": last["train_images_per_s"],
            "seconds": self.state.seconds,
            "world_size": self.info.world_size,
            "device": str(self.info.device),
            "top1_ema": last["top1_ema"],  # null when EMA is off
        }
        return metrics


def _names_change(old: list[str], new: list[str]) -> str:
    """``class names 2 -> 3 (added ['fox'])``: how two class lists differ."""
    added = [name for name in new if name not in old]
    removed = [name for name in old if name not in new]
    parts = []
    for what, names in (("added", added), ("removed", removed)):
        if names:
            parts.append(f"{what} {names[:3]}{' ...' if len(names) > 3 else ''}")
    return f"class names {len(old)} -> {len(new)} ({', '.join(parts) or 'reordered'})"


def check_new_run_folder(out: Path, force: bool, flag: str = "--out") -> None:
    """Raise :class:`TrainingError` unless a new run may start in ``out`` (named ``flag`` in
    the message): a missing or empty folder, a run folder with ``force`` (its run files are
    replaced, other files stay), or the leftovers of a start that never saved a checkpoint
    (``config.json``, TensorBoard events: a failed or killed start, even a native crash, is
    simply started again). A folder that is not a run's is never started in, ``force`` or not."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TrainingError(f"{out}: is a file; {flag} must be a folder")
    existing = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not existing or _unsaved_start(out, existing):
        return
    shown = f"{', '.join(existing[:4])}{' ...' if len(existing) > 4 else ''}"
    if not is_run_folder(out):
        found = describe_folder(out) or f"holds {shown}"
        raise TrainingError(
            f"{out}: {found}, not a run folder; a run starts only in a new, empty or run folder: "
            f"choose another {flag}"
        )
    if not force:
        raise TrainingError(
            f"{out} already holds a run ({shown}); pass --resume to continue it, --force to start "
            f"afresh there, or choose another {flag}"
        )


def _unsaved_start(out: Path, names: list[str]) -> bool:
    """``names`` are only what a run writes before its first checkpoint: TensorBoard events
    and a ``config.json`` of this trainer (or nothing)."""
    if any(n != "config.json" and not n.startswith("events.out.tfevents.") for n in names):
        return False
    if "config.json" not in names:
        return True
    with contextlib.suppress(CheckpointError, ValueError, OSError):
        recorded = read_json(out / "config.json")
        return isinstance(recorded, dict) and {"model", "preprocessing"} <= recorded.keys()
    return False


def _seed_worker(worker_id: int) -> None:
    """NumPy in loader workers: seed from the worker's torch seed (itself from (seed, epoch))."""
    np.random.seed(torch.initial_seed() % 2**32)


def _progress_bar(enabled: bool, total: int, initial: int, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        file=sys.stderr,
        disable=not enabled,
        leave=False,
        dynamic_ncols=True,
    )


def _event_writer(out: Path, global_step: int) -> Any:
    """TensorBoard's event writer for the run folder; None, with one warning, when the ``[tb]``
    extra is not installed (the run trains and logs ``log.csv`` all the same)."""
    try:
        require("tensorboard", extra="tb")
    except MissingExtraError as err:
        log.warning("TensorBoard events are not written: %s", err)
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(out), purge_step=global_step or None)
