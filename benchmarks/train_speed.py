"""Training speed of the whole classification pipeline against the model alone, in one process.

    python benchmarks/train_speed.py --data ../shared/data/imagenette --config imagenette
    python benchmarks/train_speed.py --data ../shared/data/imagenette --config imagenette --device cuda --amp bf16

"model alone" is forward + backward + optimizer step on one batch that is already on the device, normalised;
"pipeline" is the same step fed by what `linglo train` uses: the run's DataLoader and the task's to_batch (the
decoded-image cache, augmentation on the device, mixup). Both are timed in alternating blocks of --steps steps
(--rounds rounds), so a change in the machine's load hits both; the medians over blocks and their ratio are
printed (target: pipeline >= 0.9 x model alone), with the one-off data preparation time (decoding).
Extra flags are `linglo train` config keys (--set key=value ...), e.g. --set data_cache=off to time the PIL path.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from linglo.cli.config_file import load_config_file
from linglo.engine.config import resolve
from linglo.engine.trainer import _batch, _loaders, _place, autocast, resolve_amp   # the engine's own path
from linglo.engine.distributed import DistContext, pick_device
from linglo.tasks.classify.task import ClassifyTask
from linglo.models.names import parse_kwargs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--config", default=None, help="a recipe file or preset name, as `linglo train --config`")
    p.add_argument("--model", default="linglo_t")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", default="none", choices=("none", "bf16", "fp16", "auto"))
    p.add_argument("--compile", action="store_true", help="torch.compile the model (both columns)")
    p.add_argument("--steps", type=int, default=10, help="steps per timed block")
    p.add_argument("--rounds", type=int, default=5, help="alternating blocks of each kind")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="more run config keys")
    p.add_argument("--output", type=Path, default=None, help="write the result as JSON here")
    args = p.parse_args(argv)

    file_cfg = load_config_file(args.config) if args.config else {}
    cli = {"data": args.data, "model": args.model, "device": args.device, "amp": args.amp,
           **parse_kwargs(args.set, "--set")}
    cfg = resolve(ClassifyTask.defaults, ClassifyTask.optional_types, file_cfg=file_cfg, cli_cfg=cli)
    device = pick_device(cfg["device"], 0)
    ctx = DistContext(rank=0, world=1, local_rank=0, device=device)
    amp = resolve_amp(cfg["amp"], device)
    torch.manual_seed(cfg["seed"])
    task = ClassifyTask(cfg)
    t0 = time.perf_counter()
    train_ds = task.build_dataset("train")
    prep_s = time.perf_counter() - t0
    model = _place(task.build_model(), device, cfg["channels_last"]).train()
    fwd = torch.compile(model) if args.compile else model
    loader, _ = _loaders(task, train_ds, train_ds, cfg, ctx)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    stream = iter(loader)

    def next_raw():
        nonlocal stream
        try:
            return next(stream)
        except StopIteration:
            stream = iter(loader)
            return next(stream)

    def step(batch) -> None:
        with autocast(device, amp):
            loss, _ = task.loss(fwd, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    ready = _batch(task, next_raw(), device, train=True)   # one prepared batch, reused by "model alone"
    for _ in range(2):                                      # warm-up (and compilation) for both kinds
        step(ready)
        step(_batch(task, next_raw(), device, train=True))
    rates: dict[str, list[float]] = {"model alone": [], "pipeline": []}
    for _ in range(args.rounds):
        for kind in rates:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(args.steps):
                step(ready if kind == "model alone" else _batch(task, next_raw(), device, train=True))
            if device.type == "cuda":
                torch.cuda.synchronize()
            rates[kind].append(args.steps * cfg["batch_size"] / (time.perf_counter() - start))
    med = {k: statistics.median(v) for k, v in rates.items()}
    result = {"model": cfg["model"], "img_size": cfg["img_size"], "batch_size": cfg["batch_size"],
              "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
              else "cpu", "threads": torch.get_num_threads(), "amp": amp, "channels_last": cfg["channels_last"],
              "compile": args.compile, "data_cache": task.describe()["decoded_cache"], "prep_s": prep_s,
              "img_per_s": med, "img_per_s_blocks": rates, "ratio": med["pipeline"] / med["model alone"]}
    print(f"{cfg['model']} {cfg['img_size']}px batch {cfg['batch_size']} on {result['device_name']} "
          f"({result['threads']} threads, amp {amp}, channels_last {cfg['channels_last']}, compile {args.compile})")
    print(f"data preparation {prep_s:.1f} s ({result['data_cache']})")
    for k, v in med.items():
        print(f"  {k:12s} {v:8.1f} img/s   blocks: {' '.join(f'{r:.0f}' for r in rates[k])}")
    print(f"  pipeline / model alone = {result['ratio']:.3f}  (target >= 0.9)")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
