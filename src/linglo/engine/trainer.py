"""The one training / evaluation / prediction loop for every task (classify, detect, segment).

Task-specific work goes through linglo.tasks.base.Task; everything here is shared: data loading and
DDP sharding, AdamW (timm create_optimizer_v2, no weight decay on norms, biases and
model.no_weight_decay()), warmup + cosine (timm create_scheduler_v2, updated every step), AMP
(bf16/fp16), gradient clipping, EMA (timm ModelEmaV3), checkpoints + exact resume, metrics.csv,
summary.json, plots and progress. A run that cannot go on (non-finite loss or weights, out of memory,
a failed write, Ctrl-C) stops with its reason in summary.json and its last good checkpoint kept.
"""
from __future__ import annotations

import contextlib
import math
import random
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from rich.console import Console
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from linglo import __version__
from linglo.atomic import atomic_write_json, ensure_dir
from linglo.engine import distributed
from linglo.engine.checkpoint import (backbone_file_version, capture_rng, check_compatible, checkpoint_version,
                                      copy_checkpoint, load_checkpoint, load_weights, restore_rng, save_checkpoint)
from linglo.engine.config import changed_on_resume, resolve, resolve_paths
from linglo.engine.distributed import DistContext
from linglo.engine.plots import plot_history
from linglo.engine.progress import (EpochBar, epoch_line, facts_table, metrics_table, results_table,
                                    step_stats)
from linglo.engine.records import scalars, write_metrics_csv, write_summary
from linglo.engine.run_dir import RunDir
from linglo.errors import LingloError
from linglo.models import fuse as fuse_model, legacy_model_kwargs
from linglo.tasks import Task, get_task
from linglo.tasks.images import expand_inputs

EPS_OPTIMIZERS = ("adamw", "adam", "lamb")


# ---- small helpers ------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_amp(flag: str, device: torch.device) -> str:
    """auto: bf16 on a GPU that has it, else fp16 on GPU; none on CPU (slower there, not faster)."""
    if flag != "auto":
        return flag
    if device.type != "cuda":
        return "none"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def autocast(device: torch.device, amp: str):
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def param_checksum(model: nn.Module) -> float:
    return float(sum(p.detach().double().sum() for p in model.parameters()))


class TrainingStopped(LingloError):
    """The loop cannot go on (non-finite loss or weights, out of memory); the message says where."""


def _is_oom(e: BaseException) -> bool:
    text = str(e)
    return isinstance(e, torch.OutOfMemoryError) or "DefaultCPUAllocator" in text or "out of memory" in text


@contextlib.contextmanager
def memory_hint(where: str, cfg: Mapping[str, Any], device: torch.device):
    """Turn running out of memory into one line saying where and what to lower."""
    try:
        yield
    except RuntimeError as e:
        if not _is_oom(e):
            raise
        raise TrainingStopped(f"out of memory {where} on {device} (--img-size {cfg['img_size']}, --batch-size "
                              f"{cfg['batch_size']} per process): lower --batch-size or --img-size") from None


def _check_finite(model: nn.Module, epoch: int) -> None:
    """Refuse to checkpoint weights (or buffers, e.g. BatchNorm statistics) that are no longer finite."""
    bad = [k for k, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise TrainingStopped(f"the weights became non-finite in epoch {epoch + 1} (first: '{bad[0]}', "
                              f"{len(bad)} tensors); lower --lr or set --clip-grad")


def _check_task(ckpt: Mapping[str, Any], path: Path, task_name: str, command: str) -> None:
    """Name the command that fits a checkpoint of another task (before its config confuses this one)."""
    stored = ckpt["meta"].get("task")
    if stored is not None and stored != task_name:
        flag = "--resume" if command == "train" else "--checkpoint"
        raise LingloError(f"checkpoint '{path}' is a {stored} checkpoint, not {task_name}: use "
                          f"`linglo {command} {stored} {flag} {path}`")


def _explicit(key: str, file_cfg: Mapping[str, Any] | None, cli_cfg: Mapping[str, Any] | None) -> Any:
    """The value the user gave for `key` (command line over config file), or None."""
    for layer in (cli_cfg or {}, file_cfg or {}):
        for k, v in layer.items():
            if str(k).replace("-", "_") == key and v is not None:
                return v
    return None


def _config(task_cls: type[Task], file_cfg, cli_cfg, base=None) -> dict[str, Any]:
    return resolve(task_cls.defaults, task_cls.optional_types, base=base, file_cfg=file_cfg, cli_cfg=cli_cfg)


def _console(console: Console | None, ctx: DistContext) -> Console:
    return (console or Console()) if ctx.main else Console(quiet=True)


def _loaders(task: Task, train_ds: Dataset | None, val_ds: Dataset, cfg: Mapping[str, Any],
             ctx: DistContext) -> tuple[DataLoader | None, DataLoader]:
    """Train: shuffled per epoch (DistributedSampler, seeded), full batches only. Val: this rank's
    share (every world-th image, no padding, so metrics gathered over ranks count each image once)."""
    common = dict(batch_size=cfg["batch_size"], num_workers=task.workers(), collate_fn=task.collate_fn,
                  pin_memory=ctx.device.type == "cuda")
    train_loader = None
    if train_ds is not None:
        sampler = DistributedSampler(train_ds, num_replicas=ctx.world, rank=ctx.rank, shuffle=True,
                                     seed=cfg["seed"], drop_last=False)
        if len(sampler) < cfg["batch_size"]:
            raise LingloError(f"the train split has {len(train_ds)} images, fewer than one batch per process "
                              f"(--batch-size {cfg['batch_size']} x {ctx.world} process(es)); lower --batch-size")
        train_loader = DataLoader(train_ds, sampler=sampler, drop_last=True, **common)
    val_loader = DataLoader(val_ds, sampler=list(range(ctx.rank, len(val_ds), ctx.world)), **common)
    return train_loader, val_loader


def _batch(task: Task, raw: Any, device: torch.device, train: bool):
    """task.to_batch, with image batches in channels_last memory format when the run asks for it."""
    batch = task.to_batch(raw, device, train=train)
    if task.cfg.get("channels_last") and isinstance(batch.inputs, torch.Tensor) and batch.inputs.dim() == 4:
        batch.inputs = batch.inputs.contiguous(memory_format=torch.channels_last)
    return batch


def _place(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    return model.to(device, memory_format=torch.channels_last) if channels_last else model.to(device)


# ---- the loop ----------------------------------------------------------------------------------
def evaluate_model(task: Task, model: nn.Module, loader: DataLoader, ctx: DistContext, amp: str,
                   console: Console, label: str = "val") -> dict[str, Any]:
    """The task's metrics over the whole val set (each rank evaluates its share; states gathered)."""
    model.eval()
    state = task.eval_begin()
    with torch.no_grad(), EpochBar(console, label, len(loader), transient=True) as bar, \
            memory_hint(f"evaluating ({label})", task.cfg, ctx.device):
        for raw in loader:
            with autocast(ctx.device, amp):
                task.eval_step(model, _batch(task, raw, ctx.device, train=False), state)
            bar.update()
    return task.eval_end(ctx.all_gather(state))


def _train_epoch(task: Task, model: nn.Module, raw_model: nn.Module, loader: DataLoader, optimizer,
                 scheduler, scaler, ema: ModelEmaV3 | None, cfg: Mapping[str, Any], ctx: DistContext,
                 amp: str, epoch: int, step: int, console: Console) -> tuple[float, int, float]:
    """One pass over the train loader; returns (mean train loss over ranks, global step, images/s)."""
    model.train()
    loss_sum, seen = 0.0, 0
    start = time.perf_counter()
    with EpochBar(console, f"epoch {epoch + 1}/{cfg['epochs']}", len(loader)) as bar, \
            memory_hint(f"in epoch {epoch + 1} (training)", cfg, ctx.device):
        for raw in loader:
            batch = _batch(task, raw, ctx.device, train=True)
            with autocast(ctx.device, amp):
                loss, _ = task.loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg["clip_grad"]:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(raw_model.parameters(), cfg["clip_grad"])
            scaler.step(optimizer)
            scaler.update()
            step += 1
            scheduler.step_update(step)
            if ema is not None:
                ema.update(raw_model, step=step)
            value = loss.item()
            if ctx.sum(float(not math.isfinite(value)))[0]:   # every rank stops at the same step
                raise TrainingStopped(f"the training loss became {value} at epoch {epoch + 1}, step {bar.done + 1} of "
                                      f"{len(loader)} (global step {step}); lower --lr (peak "
                                      f"{optimizer.param_groups[0]['initial_lr']:.3g}) or set --clip-grad")
            loss_sum += value * batch.size
            seen += batch.size
            rate = seen * ctx.world / (time.perf_counter() - start)
            bar.update(step_stats(loss_sum / seen, optimizer.param_groups[0]["lr"], rate))
    loss_sum, seen_all = ctx.sum(loss_sum, seen)
    return loss_sum / seen_all, step, seen_all / (time.perf_counter() - start)


def train(task_name: str, *, file_cfg: Mapping[str, Any] | None = None, cli_cfg: Mapping[str, Any] | None = None,
          console: Console | None = None) -> dict[str, Any]:
    """Train (or resume) a run; returns its summary (also written to OUTPUT/summary.json)."""
    task_cls = get_task(task_name)
    cfg = _config(task_cls, file_cfg, {**(cli_cfg or {}), "task": task_name})
    cfg["model"] = cfg["model"] or task_cls.defaults.get("model")
    default_out = f"runs/{task_name}-{cfg['model']}"
    ckpt, ckpt_path = None, None
    if cfg["resume"]:
        ckpt_path = (Path(cfg["output"] or default_out) / "last.pt" if cfg["resume"] == "auto"
                     else Path(cfg["resume"]))
        if not ckpt_path.is_file():
            raise LingloError(f"nothing to resume: checkpoint '{ckpt_path}' does not exist")
        ckpt = load_checkpoint(ckpt_path)
        _check_task(ckpt, ckpt_path, task_name, "train")
        cfg = _legacy(_config(task_cls, file_cfg, {**(cli_cfg or {}), "task": task_name}, base=ckpt["config"]), ckpt)
        changed = changed_on_resume(ckpt["config"], cfg)
        if changed:
            raise LingloError(f"--resume: the run of '{ckpt_path}' was made with other settings ({', '.join(changed)}); "
                              "a resumed run keeps its recipe (only --epochs, --eval-interval, --workers, --device, --amp, "
                              "--channels-last and the data's location may change): drop those flags, or start a new run")
        cfg["output"] = _explicit("output", file_cfg, cli_cfg) or str(ckpt_path.parent)
    elif cfg.get("backbone_weights") and (version := backbone_file_version(cfg["backbone_weights"])):
        # a classifier of an older version as backbone: build (and record, for eval / predict) its architecture
        cfg["model_kwargs"] = legacy_model_kwargs(cfg["model"], cfg["model_kwargs"] or {}, version)
    cfg["output"] = cfg["output"] or default_out
    resolve_paths(cfg)
    out = Path(cfg["output"])
    in_place = ckpt_path is not None and out.resolve() == ckpt_path.parent.resolve()
    ctx = distributed.setup(cfg["device"])
    run = RunDir(out, resume=in_place, overwrite=cfg["overwrite"], main=ctx.main)
    if in_place:
        run.saved_epoch = ckpt["epoch"]
    try:
        return _fit(task_cls, cfg, ckpt, ckpt_path, ctx, _console(console, ctx), run)
    except KeyboardInterrupt:
        run.stopped("interrupted", "interrupted by the user (Ctrl-C / SIGINT)")
        raise KeyboardInterrupt(_resume_hint(run, task_name)) from None
    except TrainingStopped as e:
        run.stopped("failed", str(e))
        raise TrainingStopped(f"{e}; {_kept(run)}") from e
    except BaseException as e:
        run.stopped("failed", str(e) if isinstance(e, LingloError) else f"{type(e).__name__}: {e}")
        raise
    finally:
        run.close()
        distributed.teardown()


def _kept(run: RunDir) -> str:
    """What the run folder holds after a failure."""
    if run.saved_epoch is not None:
        return f"'{run.out / 'last.pt'}' keeps epoch {run.saved_epoch}"
    return f"the earlier run in '{run.out}' is kept" if run.aside is not None else "no checkpoint was written"


def _resume_hint(run: RunDir, task_name: str) -> str:
    if run.saved_epoch is None:
        return f"interrupted before the first checkpoint: {_kept(run)}"
    task = "" if task_name == "classify" else f" {task_name}"
    return f"interrupted: {_kept(run)}; continue with: linglo train{task} --resume --output {run.out}"


def _open_run(run: RunDir, ckpt: Mapping[str, Any] | None, ckpt_path: Path | None, ctx: DistContext) -> None:
    """Rank 0 creates and locks the run folder (every rank raises its error); a run resumed into
    another folder starts it with the checkpoint (last.pt) and the best one so far (best.pt)."""
    error = None
    if ctx.main:
        try:
            run.open()
            if ckpt is not None and not run.resume:
                _carry_checkpoints(ckpt, ckpt_path, run.out)
                run.committed(ckpt["epoch"])
        except (LingloError, OSError) as e:
            error = str(e) if isinstance(e, LingloError) else f"could not write to '{run.out}': {e}"
    errors = [e for e in ctx.all_gather(error) if e]
    if errors:
        raise LingloError(errors[0])


def _carry_checkpoints(ckpt: Mapping[str, Any], ckpt_path: Path, out: Path) -> None:
    copy_checkpoint(ckpt_path, out / "last.pt")
    best_epoch = (ckpt.get("best") or {}).get("epoch")
    if best_epoch == ckpt["epoch"]:
        copy_checkpoint(ckpt_path, out / "best.pt")
        return
    source = ckpt_path.parent / "best.pt"
    if best_epoch is not None and source.is_file() and load_checkpoint(source).get("epoch") == best_epoch:
        copy_checkpoint(source, out / "best.pt")
    else:
        print(f"warning: the best epoch so far ({best_epoch}) has no best.pt next to '{ckpt_path}'; "
              f"'{out / 'best.pt'}' will be written when a resumed epoch is the best")


def _fit(task_cls: type[Task], cfg: dict[str, Any], ckpt: Mapping[str, Any] | None, ckpt_path: Path | None,
         ctx: DistContext, console: Console, run: RunDir) -> dict[str, Any]:
    out = run.out
    run.check()
    amp = resolve_amp(cfg["amp"], ctx.device)
    seed_everything(cfg["seed"] + ctx.rank)

    task = task_cls(cfg)
    train_ds, val_ds = task.build_dataset("train"), task.build_dataset("val")
    meta = {"task": task.name, "model": cfg["model"], **task.meta}
    if ckpt is not None:
        check_compatible(ckpt, ckpt_path, meta)
    model = _place(task.build_model(), ctx.device, cfg["channels_last"])
    n_params = sum(p.numel() for p in model.parameters())
    ema = ModelEmaV3(model, decay=cfg["ema_decay"], use_warmup=True) if cfg["ema"] else None
    train_loader, val_loader = _loaders(task, train_ds, val_ds, cfg, ctx)
    global_batch = cfg["batch_size"] * ctx.world
    lr = cfg["lr"] or cfg["lr_base"] * global_batch / cfg["lr_base_size"]
    opt_kwargs = {"eps": cfg["opt_eps"]} if cfg["opt"] in EPS_OPTIMIZERS else {}
    optimizer = create_optimizer_v2(model, opt=cfg["opt"], lr=lr, weight_decay=cfg["weight_decay"],
                                    momentum=cfg["momentum"], **opt_kwargs)
    scheduler, _ = create_scheduler_v2(optimizer, sched=cfg["sched"], num_epochs=cfg["epochs"],
                                       warmup_epochs=cfg["warmup_epochs"], warmup_lr=cfg["warmup_lr"],
                                       min_lr=cfg["min_lr"], step_on_epochs=False,
                                       updates_per_epoch=len(train_loader))
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=amp == "fp16")
    ddp = (DistributedDataParallel(model, device_ids=[ctx.device] if ctx.device.type == "cuda" else None)
           if ctx.world > 1 else model)

    start, history, best, step = 0, [], None, 0
    if ckpt is not None:
        start, history, best, step = ckpt["epoch"], list(ckpt["history"]), ckpt["best"], ckpt["global_step"]
        if start >= cfg["epochs"]:
            raise LingloError(f"the run in '{out}' already finished {start}/{cfg['epochs']} epochs; "
                              "pass a larger --epochs to continue it")
        load_weights(model, ckpt["model"], ckpt_path)
        if ema is not None and ckpt.get("ema") is not None:
            load_weights(ema.module, ckpt["ema"], ckpt_path)
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt["config"]["epochs"] == cfg["epochs"]:
            scheduler.load_state_dict(ckpt["scheduler"])
        scheduler.step_update(step)
        scaler.load_state_dict(ckpt["scaler"])
        if len(ckpt["rng"]) == ctx.world:
            restore_rng(ckpt["rng"][ctx.rank])
        else:
            console.print(f"[yellow]warning: checkpoint was made by {len(ckpt['rng'])} process(es), this run has "
                          f"{ctx.world}: random streams are reseeded, so results will not match an uninterrupted run")
            seed_everything(cfg["seed"] + ctx.rank + 1000 * start)
    if cfg["warmup_epochs"] >= cfg["epochs"]:
        console.print(f"[yellow]warning: --warmup-epochs {cfg['warmup_epochs']} >= --epochs {cfg['epochs']}: the lr "
                      f"is still warming up when training ends and never reaches its peak {lr:.3g}; lower "
                      "--warmup-epochs", soft_wrap=True)
    _open_run(run, ckpt, ckpt_path, ctx)

    data = task.describe()
    console.print(facts_table([
        ("task / model", f"{task.name} / {cfg['model']} ({n_params / 1e6:.2f} M params)"),
        ("data", f"{data.get('data', cfg['data'])}: {len(train_ds)} train / {len(val_ds)} val images"
                 + (f", {len(meta['class_names'])} classes" if "class_names" in meta else "")),
        ("schedule", f"{cfg['epochs']} epochs x {len(train_loader)} steps, global batch {global_batch}, "
                     f"lr {lr:.3g} ({cfg['opt']}, {cfg['sched']}, warmup {cfg['warmup_epochs']})"),
        ("device", f"{ctx.device} x {ctx.world} process(es), amp {amp}, ema {'on' if ema else 'off'}"),
        ("output", str(out) + (f" (resuming after epoch {start})" if ckpt is not None else "")),
    ]))

    def summary(status: str, detail: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
        last = history[-1] if history else {}
        return {"status": status, "task": task.name, "model": cfg["model"], "params": n_params,
                "epochs": cfg["epochs"], "epochs_done": len(history),
                "primary_metric": f"val_{task.primary_metric}", "best": history[best["epoch"] - 1] if best else None,
                "last": last or None, "val_detail": {k: v for k, v in detail.items() if k not in last},
                "time_s": sum(r["epoch_time_s"] for r in history), "device": str(ctx.device), "amp": amp,
                "world_size": ctx.world, "global_batch": global_batch, "lr": lr, "data": data, "meta": meta,
                "config": cfg, **extra}

    metrics: dict[str, Any] = {}
    run.report = lambda status, reason: write_summary(out / "summary.json", summary(status, metrics, reason=reason))
    for epoch in range(start, cfg["epochs"]):
        t0 = time.perf_counter()
        train_loader.sampler.set_epoch(epoch)
        if hasattr(train_ds, "set_epoch"):   # per-item augmentation streams (tasks.images.EpochSeeded)
            train_ds.set_epoch(epoch)
        train_loss, step, rate = _train_epoch(task, ddp, model, train_loader, optimizer, scheduler, scaler, ema,
                                              cfg, ctx, amp, epoch, step, console)
        _check_finite(model, epoch)
        row = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], "train_loss": train_loss}
        evaluated = (epoch + 1) % cfg["eval_interval"] == 0 or epoch + 1 == cfg["epochs"]
        if evaluated:
            metrics = evaluate_model(task, model, val_loader, ctx, amp, console)
            row.update(scalars(metrics, "val_"))
            if ema is not None:
                row.update(scalars(evaluate_model(task, ema.module, val_loader, ctx, amp, console, "val (EMA)"),
                                   "ema_val_"))
        row.update(epoch_time_s=time.perf_counter() - t0, train_img_per_s=rate)
        history.append(row)
        value = row.get(f"val_{task.primary_metric}")
        is_best = evaluated and (best is None or (value > best["value"] if task.higher_is_better
                                                  else value < best["value"]))
        if is_best:
            best = {"epoch": epoch + 1, "value": value}
        rng = ctx.all_gather(capture_rng())
        error = None
        if ctx.main:
            state = {"model": model.state_dict(), "ema": ema.module.state_dict() if ema is not None else None,
                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "scaler": scaler.state_dict(), "epoch": epoch + 1, "global_step": step, "history": history,
                     "best": best, "rng": rng, "config": cfg, "meta": meta, "version": __version__}
            try:
                save_checkpoint(out / "last.pt", state)
                run.committed(epoch + 1)
                if is_best:
                    save_checkpoint(out / "best.pt", state)
                write_metrics_csv(out / "metrics.csv", history)
                write_summary(out / "summary.json", summary("running", metrics))
                plot_history(history, out, task.primary_metric)
            except (LingloError, OSError) as e:
                error = str(e) if isinstance(e, LingloError) else f"could not write to '{out}': {e}"
        errors = [e for e in ctx.all_gather(error) if e]
        if errors:
            raise LingloError(errors[0])
        console.print(epoch_line(row, cfg["epochs"], task.primary_metric, is_best))

    per_rank = ctx.all_gather({"param_checksum": param_checksum(model), "val": scalars(metrics, "val_")})
    final = summary("finished", metrics, distributed={"world_size": ctx.world, "per_rank": per_rank})
    if ctx.main:
        write_summary(out / "summary.json", final)
        reports = task.eval_report(metrics, out)
        console.print(results_table(history[-1], final["best"], f"{task.name}: {cfg['model']} ({out})"))
        for r in reports:
            console.print(r)
        console.print(f"files in {out}: {', '.join(sorted(p.name for p in out.iterdir() if not p.name.startswith('.')))}")
    return final


# ---- eval and predict from a checkpoint -----------------------------------------------------------
def _from_checkpoint(task_name: str, command: str, file_cfg, cli_cfg):
    task_cls = get_task(task_name)
    path = _explicit("checkpoint", file_cfg, cli_cfg)
    if not path:
        raise LingloError("--checkpoint is required (e.g. runs/<run>/best.pt)")
    ckpt = load_checkpoint(path)
    _check_task(ckpt, Path(path), task_name, command)
    cfg = _legacy(_config(task_cls, file_cfg, cli_cfg, base=ckpt["config"]), ckpt)
    return task_cls, cfg, ckpt, Path(path)


def _legacy(cfg: dict[str, Any], ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """A run config over a checkpoint of an older version: its version's defaults also under model kwargs given
    again on the command line (the stored ones already have them: load_checkpoint), so the model is rebuilt as
    trained."""
    cfg["model_kwargs"] = legacy_model_kwargs(cfg["model"], cfg["model_kwargs"] or {}, checkpoint_version(ckpt))
    return cfg


def _checkpoint_model(task: Task, ckpt: Mapping[str, Any], path: Path, use_ema: bool,
                      device: torch.device) -> nn.Module:
    model = task.build_model()
    if use_ema and ckpt.get("ema") is None:
        raise LingloError(f"checkpoint '{path}' has no EMA weights (trained without EMA); drop --use-ema")
    load_weights(model, ckpt["ema"] if use_ema else ckpt["model"], path)
    return _place(model, device, task.cfg["channels_last"]).eval()


def evaluate(task_name: str, *, file_cfg: Mapping[str, Any] | None = None,
             cli_cfg: Mapping[str, Any] | None = None, console: Console | None = None) -> dict[str, Any]:
    """Evaluate a checkpoint on the val split of --data (default: the data it was trained on)."""
    task_cls, cfg, ckpt, path = _from_checkpoint(task_name, "eval", file_cfg, cli_cfg)
    ctx = distributed.setup(cfg["device"])
    try:
        console = _console(console, ctx)
        amp = resolve_amp(cfg["amp"], ctx.device)
        task = task_cls(cfg)
        val_ds = task.build_dataset("val")
        check_compatible(ckpt, path, {"task": task.name, "model": cfg["model"], **task.meta})
        model = _checkpoint_model(task, ckpt, path, cfg["use_ema"], ctx.device)
        _, loader = _loaders(task, None, val_ds, cfg, ctx)
        given = _explicit("output", file_cfg, cli_cfg)
        out = Path(given or path.parent / f"eval-{path.stem}{'-ema' if cfg['use_ema'] else ''}")
        # before the work: a folder that cannot be written is known now
        ensure_dir(out, *(() if given else ("eval's default output folder", "; choose another with --output")))
        metrics = evaluate_model(task, model, loader, ctx, amp, console)
        result = {"checkpoint": str(path), "weights": "ema" if cfg["use_ema"] else "model",
                  "data": task.describe(), "metrics": metrics}
        if ctx.main:
            atomic_write_json(out / "eval.json", result)
            console.print(metrics_table(metrics, f"eval: {cfg['model']} on {len(val_ds)} val images ({path})"))
            for r in task.eval_report(metrics, out):
                console.print(r)
            console.print(f"written: {out / 'eval.json'}")
        return result
    finally:
        distributed.teardown()


def predict(task_name: str, inputs: Sequence[str], *, fuse: bool = True, file_cfg: Mapping[str, Any] | None = None,
            cli_cfg: Mapping[str, Any] | None = None, console: Console | None = None) -> list[dict[str, Any]]:
    """Run a checkpoint on image files / folders; prints the results, writes predictions.json to --output.
    fuse: fold the model for inference first (linglo.fuse; same predictions)."""
    task_cls, cfg, ckpt, path = _from_checkpoint(task_name, "predict", file_cfg, cli_cfg)
    task = task_cls(cfg)
    check_compatible(ckpt, path, {"task": task.name, "model": cfg["model"]})
    task.meta = {k: v for k, v in ckpt["meta"].items() if k not in ("task", "model")}
    files = expand_inputs(inputs)
    device = distributed.pick_device(cfg["device"], 0)
    model = _checkpoint_model(task, ckpt, path, cfg["use_ema"], device)
    if fuse:
        model = fuse_model(model, inplace=True)
    out = _explicit("output", file_cfg, cli_cfg)
    out = ensure_dir(out) if out else None
    with torch.no_grad(), autocast(device, resolve_amp(cfg["amp"], device)), memory_hint("predicting", cfg, device):
        preds = task.predict(model, files, device, out)
    console = console or Console()
    for r in task.predict_report(preds):
        console.print(r)
    if out is not None:
        atomic_write_json(out / "predictions.json", preds)
        pictures = sum(k in p for p in preds for k in ("drawn", "mask"))   # detect/segment draw each image
        console.print(f"written: {out / 'predictions.json'}"
                      + (f" and {pictures} pictures (drawn predictions, masks) in {out}" if pictures else ""), soft_wrap=True)
    return preds
