"""Ablation studies of the SPEC's claims, end to end: prepare the data, train every arm with every seed, read
back the metrics, measure params / GMACs / latency, write a table, a CSV and a plot per study.

    python benchmarks/study.py all --budget cpu                    # every study on Imagenette, 2 CPU cores
    python benchmarks/study.py mixer peers --budget cpu            # some studies
    python benchmarks/study.py all --budget gpu --device cuda      # the whole grid on one GPU (see gpu_study.sh)
    python benchmarks/study.py mixer --budget toy                  # seconds (what the tests run)

Studies (SPEC claims in brackets):
    mixer   key-only attention (the first formulation and the new ones) vs softmax, linear, separable attention
            and no mixer, at equal parameter count: the MLP ratio of each arm is set so its backbone has the
            baseline's parameters (claims 1-2)
    layout  alternate vs graft, same blocks, depth and width (claim 4)
    window  window 7 / 3 / 1 / 0 (global only), axial 7 vs square 7, with and without the global term (claim 2)
    macro   linglo_t's depths as 0.2 built them (2, 2, 6, 2) vs 0.3's (2, 2, 4, 2), and 0.3's without layer scale;
            macro_xs: linglo_xs's depths, the same two
    peers   linglo_t vs the timm peers of its size row, same recipe (claim 5 at this scale); peers_xs, peers_s,
            peers_m: the other size rows
    cost    latency and peak memory of each mixer inside linglo_t against resolution (claim 3)
Every arm of a study gets the same recipe, budget and seeds; an arm that several studies share is trained once.
Arms with the same seed share more than the seed: the data order, every augmentation draw (tasks.classify.decoded keys
them by the batch's images), and the initial weights of every module they have in common (LinGlo draws each
module's init from its name), so a paired comparison by seed removes most of the seed-to-seed noise.

Budgets (data from ../shared/data, or --data):
    toy    Imagenette, 2 train / 1 val image per class at 32 px, 1 epoch: the tests (--tasks classify segment adds
           coco128_semseg segmentation)
    cpu    Imagenette at 128 px (stage-1 maps 32², where a 7×7 window is local), 500 train images per class,
           the whole val split, 4 epochs, 3 seeds, 2 runs at a time of 1 thread each: one session on 2 cores
    gpu    Imagenette at 128 px, the whole train and val split, 20 epochs, 3 seeds, bf16: one GPU, many runs
           at a time (benchmarks/gpu_study.sh runs it in one call)
    small  the first studies' budget: hymenoptera at 64 px (maps of 16² and smaller) and coco128_semseg
           segmentation, kept to reproduce docs/study/small

Resumable: each run is a `linglo train` run folder under RUNS; a finished run is read back, an interrupted
one resumes from its last.pt. Rerun the same command after an interruption.

Reading: per arm, mean ± sample std over seeds of the last epoch's val metric (not the best epoch: that
would select on the val set), and the val split's own sampling error, sqrt(p(100 − p) / n) points for a
top-1 of p % on n images. Two rules compare an arm with the baseline (and with the study's other references):
unpaired, an arm differs only when |Δmean| > sqrt(std_arm² + std_base²); paired by seed, the per-seed
differences d_s give mean ± std and t = mean / (std / √n), and an arm differs when |t| exceeds Student's
two-sided 95 % point for n − 1 degrees of freedom (4.30 for 3 seeds).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import shutil
import statistics
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Mapping, Sequence

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MIXERS = ("key_only", "softmax", "linear", "separable", "none")
METRICS = {"classify": ("top1",), "segment": ("mIoU", "aAcc")}


@dataclass(frozen=True)
class Arm:
    label: str
    model: str = "linglo_t"
    kwargs: tuple[tuple[str, Any], ...] = ()   # timm.create_model arguments, sorted (key, value) pairs
    equal_params: bool = False                 # set mlp_ratio so the backbone has the baseline's parameters

    @property
    def spec(self) -> str:
        """The arm as its run folder names it: name[key=value,...] (its kwargs over LinGlo 0.1's defaults)."""
        return _spec(self.model, self.kwargs)

    @property
    def build_kwargs(self) -> dict[str, Any]:
        """timm.create_model arguments of the arm: its kwargs with LinGlo 0.1's defaults filled in (the studies'
        base, on which they chose 0.2's defaults), so an arm builds the model its runs trained."""
        from linglo.models import legacy_model_kwargs
        return legacy_model_kwargs(self.model, dict(self.kwargs))

    @property
    def build_spec(self) -> str:
        """The arm as `linglo bench --models` takes it (build_kwargs spelled out)."""
        return _spec(self.model, sorted(self.build_kwargs.items()))


def _spec(model: str, kwargs: Sequence[tuple[str, Any]]) -> str:
    """name[key=value,...] (`linglo bench --models` syntax; just the name without kwargs)."""
    return model + (f"[{','.join(f'{k}={v}' for k, v in kwargs)}]" if kwargs else "")


def arm(label: str, model: str = "linglo_t", equal_params: bool = False, **kwargs: Any) -> Arm:
    return Arm(label, model, tuple(sorted(kwargs.items())), equal_params)


@dataclass(frozen=True)
class Study:
    claim: str
    tasks: tuple[str, ...]
    arms: tuple[Arm, ...]              # the first is the baseline
    references: tuple[str, ...] = ()   # labels of more arms that every arm is compared with, paired by seed


# Key-only attention as first formulated (saliency from a 1×1 projection, no query side), and what the mixer study
# adds to it within the SPEC's constraints (weights from the keys alone, no query-key product, linear cost).
KEY_ONLY_V1 = dict(token_mixer="key_only", query_gate=False, saliency_conv=0, value_conv=0)
KEY_ONLY_ARMS = {
    "key_only": KEY_ONLY_V1,
    "key_only + query gate": {**KEY_ONLY_V1, "query_gate": True},
    "key_only + query gate + value conv": {**KEY_ONLY_V1, "query_gate": True, "value_conv": 3},
    "key_only + query gate + value conv + saliency conv": {**KEY_ONLY_V1, "query_gate": True, "value_conv": 3,
                                                           "saliency_conv": 3},
}
# The family's default as the mixer study decided it (docs/study.md); layout, window and peers vary this arm.
DEFAULT = "key_only + query gate + value conv"


def _mixer_study() -> Study:
    first, *more = KEY_ONLY_ARMS.items()
    return Study("key-only attention (first and new formulations) vs the other token mixers at equal parameter count",
                 ("classify", "segment"),
                 (arm(first[0], **first[1]), *(arm(label, equal_params=True, **kw) for label, kw in more),
                  *(arm(m, equal_params=True, token_mixer=m) for m in MIXERS[1:])),
                 references=("none", "linear"))


def default_arm(label: str | None = None, **changes: Any) -> Arm:
    """The family default (the mixer study's DEFAULT arm, with its equal-parameter MLP ratio) with `changes`."""
    base = next(a for a in resolve_arms(STUDIES["mixer"]) if a.label == DEFAULT)
    return Arm(label or DEFAULT, base.model, tuple(sorted({**dict(base.kwargs), **changes}.items())))


def lead_arm(variant: str, label: str | None = None, **changes: Any) -> Arm:
    """A family member with the default arm's mixer (as 0.2 built it) and `changes`: the lead of its row's studies.
    linglo_t's equal-parameter MLP ratio is for its widths only; the other variants keep their own."""
    mixer = dict(default_arm().kwargs)
    if variant != "linglo_t":
        mixer.pop("mlp_ratio")
    return Arm(label or variant, variant, tuple(sorted({**mixer, **changes}.items())))


def _peer_study(variant: str) -> Study:
    """A LinGlo variant vs the timm peers of its SPEC size row (those that take any input size: the study trains
    at the budget's size, and timm builds some, e.g. tiny_vit, for 224² only)."""
    import timm

    from linglo.bench import PEERS
    peers = [m for m in PEERS[variant] if not timm.models.get_pretrained_cfg(m).fixed_input_size]
    return Study(f"{variant} vs the timm peers of its size row, same recipe", ("classify", "segment"),
                 (lead_arm(variant), *(arm(m, m) for m in peers)))


def _macro_study(variant: str, *more: Arm) -> Study:
    """A family member's depths as 0.2 built them (2, 2, 6, 2) against two fewer blocks at stride 16 (0.3's). The
    baseline names its depths: its runs are the study's own (not the mixer study's arm of the same model), so the
    study pairs runs of one machine and session."""
    return Study(f"{variant}'s macro design: two fewer blocks at stride 16 (faster at 224²)", ("classify",),
                 (lead_arm(variant, "2-2-6-2 (0.2)", depths=(2, 2, 6, 2)),
                  lead_arm(variant, "2-2-4-2", depths=(2, 2, 4, 2)), *more))


STUDIES: dict[str, Study] = {"mixer": _mixer_study()}


def _derived_studies() -> dict[str, Study]:
    """Studies that vary the DEFAULT arm (built once the mixer study's arms are resolved)."""
    studies = {
        "layout": Study("alternate layout (conv and attention blocks in every stage) vs graft", ("classify", "segment"),
                        (default_arm("alternate"), default_arm("graft", layout="graft"))),
        "window": Study("local window and global term of key-only attention", ("classify",),
                        (default_arm("7x7 + global"), default_arm("3x3 + global", window=3),
                         default_arm("1x1 + global", window=1), default_arm("global only", window=0),
                         default_arm("7 axial + global", axial=True), default_arm("7x7, no global", global_term=False))),
        "macro": _macro_study("linglo_t", lead_arm("linglo_t", "2-2-4-2, no layer scale", depths=(2, 2, 4, 2),
                                                   ls_init_value=0)),
        "macro_xs": _macro_study("linglo_xs"),
    }
    studies.update({"peers" if v == "linglo_t" else f"peers_{v[len('linglo_'):]}": _peer_study(v)
                    for v in ("linglo_t", "linglo_xs", "linglo_s", "linglo_m")})
    return studies


ALL = ("mixer", "layout", "window", "macro", "macro_xs", "peers", "peers_xs", "peers_s", "peers_m", "cost")

# Per budget: the dataset of each task and which tasks run, seeds, train images kept per class (None = all) and
# val images per class, the size images are resized to beforehand (shorter side; None = use the files as they
# are), each task's `linglo train` recipe, the cost study's resolutions, the studies `all` runs, and the default
# parallelism (--jobs / --threads).
IMAGENETTE_RECIPE = {"img_size": 128, "scale": [0.35, 1.0], "aa": "none", "color_jitter": 0.0, "reprob": 0.0,
                     "mixup": 0.0, "cutmix": 0.0, "smoothing": 0.1, "drop_path": 0.05, "channels_last": True,
                     "data_cache": "memory"}
BUDGETS: dict[str, dict[str, Any]] = {
    "toy": {"data": {"classify": "imagenette", "segment": "coco128_semseg"}, "tasks": ("classify",), "seeds": 1,
            "limit": 2, "val_limit": 1, "cost_repeats": 1,
            "all": ("mixer", "layout", "window", "macro", "macro_xs", "peers", "cost"),
            "prep": {"classify": None, "segment": 64}, "cost": [32, 64], "cost_res": 64,
            "classify": {**IMAGENETTE_RECIPE, "img_size": 32, "epochs": 1, "batch_size": 8, "lr": 1e-3,
                         "warmup_epochs": 0},
            "segment": {"img_size": 64, "epochs": 1, "batch_size": 2, "lr": 1e-3, "warmup_epochs": 0,
                        "head_channels": 16}},
    "cpu": {"data": {"classify": "imagenette"}, "tasks": ("classify",), "seeds": 3, "limit": 500, "val_limit": None,
            "prep": {"classify": None}, "cost": [128, 256, 512, 1024], "cost_res": 224, "jobs": 2, "threads": 1,
            "all": ("mixer", "peers", "layout", "window", "macro", "macro_xs"),
            "classify": {**IMAGENETTE_RECIPE, "epochs": 4, "batch_size": 32, "lr": 2e-3, "warmup_epochs": 1,
                         "eval_interval": 4}},
    "gpu": {"data": {"classify": "imagenette"}, "tasks": ("classify",), "seeds": 3, "limit": None, "val_limit": None,
            "prep": {"classify": None}, "cost": [256, 512, 1024, 2048, 4096], "cost_res": 224, "jobs": 8,
            "threads": 2, "all": ("mixer", "peers", "window", "layout", "macro", "macro_xs"),
            "classify": {**IMAGENETTE_RECIPE, "epochs": 20, "batch_size": 128, "lr": 3e-3, "warmup_epochs": 2,
                         "amp": "bf16", "eval_interval": 5}},
    "small": {"data": {"classify": "hymenoptera", "segment": "coco128_semseg"}, "seeds": 3, "limit": None,
              "val_limit": None, "all": ("mixer", "layout", "window", "peers", "peers_xs", "cost"),
              "prep": {"classify": 73, "segment": 128}, "cost": [128, 256, 512, 1024], "cost_res": 224,
              "classify": {"img_size": 64, "epochs": 40, "batch_size": 32, "lr": 2e-3, "warmup_epochs": 3,
                           "aa": "none", "reprob": 0.0, "mixup": 0.0, "cutmix": 0.0, "drop_path": 0.05},
              "segment": {"img_size": 128, "epochs": 20, "batch_size": 8, "lr": 1e-3, "warmup_epochs": 2,
                          "clip_grad": 1.0, "head_channels": 64, "drop_path": 0.1}},
}
COMMON = {"ema": False, "workers": 0, "overwrite": True}
# timm models whose CPU training aborts the process in channels_last memory (torch 2.14.1, fastvit_t8's backward:
# glibc "corrupted size vs. prev_size"; the other FastViTs share its blocks): trained NCHW on CPU
NCHW_ON_CPU = ("fastvit_",)
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}   # Student t, 2-sided 95 %


def get_study(name: str) -> Study:
    if name not in STUDIES:
        STUDIES.update(_derived_studies())
    return STUDIES[name]


# ---- data ----------------------------------------------------------------------------------------------------
def _resize(src: Path, dst: Path, short: int | None, nearest: bool) -> None:
    from PIL import Image
    with Image.open(src) as im:
        im = im.copy() if nearest else im.convert("RGB")   # masks keep their mode and ids
        if short is not None:
            scale = short / min(im.size)
            size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
            im = im.resize(size, Image.NEAREST if nearest else Image.BICUBIC)
        dst.parent.mkdir(parents=True, exist_ok=True)
        im.save(dst)


def _place(src: Path, dst: Path, short: int | None) -> None:
    """dst: a resized PNG copy of image src, or a link to it when the size is kept."""
    if short is None:
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(src.resolve())
    else:
        _resize(src, dst.with_suffix(".png"), short, nearest=False)


def prepare_data(task: str, name: str, src: Path, dst_root: Path, short: int | None, limit: int | None,
                 val_limit: int | None) -> Path:
    """The task's dataset in its own layout, resized (or linked, with short None) and cut to the first `limit` train
    / `val_limit` val images per class (built once, in a temp folder then renamed)."""
    cut = (f"-first{limit}" if limit else "") + (f"-val{val_limit}" if val_limit else "")
    dst = dst_root / f"{name}-{short or 'orig'}{cut}"
    if dst.is_dir():
        return dst
    if not src.is_dir():
        sys.exit(f"error: dataset folder '{src}' not found (pass --data DIR holding {name}/)")
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if task == "classify":   # ImageFolder: split/class/image (+ classes.txt)
        for split, n in (("train", limit), ("val", val_limit)):
            for cls in sorted(p for p in (src / split).iterdir() if p.is_dir()):
                for f in sorted(cls.iterdir())[:n]:
                    _place(f, tmp / split / cls.name / f.name, short)
        if (src / "classes.txt").is_file():
            shutil.copy(src / "classes.txt", tmp / "classes.txt")
    else:                    # COCO-semseg: images/<split>/x.jpg + masks/<split>/x.png; only images with a mask
        for split in ("train2017", "val2017"):
            for m in sorted((src / "masks" / split).glob("*.png"))[:limit]:
                _resize(m, tmp / "masks" / split / m.name, short, nearest=True)
                image = next((src / "images" / split).glob(m.stem + ".*"))   # .jpg (COCO) or another format
                _resize(image, tmp / "images" / split / (m.stem + ".png"), short, nearest=False)
        shutil.copy(src / "classes.yaml", tmp / "classes.yaml")
    os.replace(tmp, dst)
    return dst


# ---- arms ----------------------------------------------------------------------------------------------------
def backbone_params(arm: Arm, mlp_ratio: float | None = None) -> int:
    """Parameters of the arm's backbone (no classifier), counted on the meta device (no memory, fast)."""
    import timm
    import torch

    import linglo  # noqa: F401
    kwargs = dict(arm.build_kwargs, **({"mlp_ratio": mlp_ratio} if mlp_ratio is not None else {}))
    with torch.device("meta"):
        model = timm.create_model(arm.model, num_classes=0, **kwargs)
    return sum(p.numel() for p in model.parameters())


@lru_cache(maxsize=None)
def resolve_arms(study: Study) -> tuple[Arm, ...]:
    """Arms with equal_params get the mlp_ratio (a multiple of 1/64) that brings their backbone closest to the
    baseline's parameter count. The count is linear in the ratio up to rounding of the hidden widths, so two counts
    place it and its neighbours on the 1/64 grid settle it (once per study: planning and reading both ask)."""
    target = backbone_params(study.arms[0])
    out = []
    for a in study.arms:
        if a.equal_params:
            p3, p5 = backbone_params(a, 3.0), backbone_params(a, 5.0)
            guess = round(64 * (3.0 + 2.0 * (target - p3) / (p5 - p3)))
            k = min((guess - 1, guess, guess + 1), key=lambda r: abs(backbone_params(a, r / 64) - target))
            a = Arm(a.label, a.model, tuple(sorted({**dict(a.kwargs), "mlp_ratio": k / 64}.items())))
        out.append(a)
    return tuple(out)


# ---- runs ----------------------------------------------------------------------------------------------------
def run_dir(runs: Path, task: str, a: Arm, seed: int) -> Path:
    name = a.spec.replace(" ", "").replace("[", "-").replace("]", "").replace(",", "-")
    return runs / f"{task}-{name}-s{seed}"


def _init_worker(threads: int) -> None:
    import torch
    torch.set_num_threads(threads)


def train_one(task: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """One `linglo train` run (in this process), its console output going to OUTPUT/train.log. A run whose
    summary shows all epochs done is read back; one interrupted earlier resumes from OUTPUT/last.pt."""
    from rich.console import Console

    from linglo.engine import train
    from linglo.engine.run_dir import read_summary
    out = Path(cfg["output"])
    done = read_summary(out)
    if done.get("epochs") == done.get("epochs_done") == cfg["epochs"]:   # finished (or killed while finishing)
        return done
    if (out / "last.pt").exists():
        cfg = {**cfg, "resume": "auto", "overwrite": False}
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "train.log", "a") as log:
        return train(task, cli_cfg=cfg, console=Console(file=log, width=120, force_terminal=False))


def plan_runs(studies: Sequence[Study], budget: str, seeds: int, data: Mapping[str, Path], runs: Path,
              device: str) -> dict[Path, tuple[str, dict[str, Any]]]:
    """Every (task, arm, seed) the studies need, keyed by run folder (shared arms appear once), study by study
    and within a study seed by seed, so whole studies (and whole seeds of one) finish first."""
    b = BUDGETS[budget]
    jobs: dict[Path, tuple[str, dict[str, Any]]] = {}
    for study in studies:
        for task in study.tasks:
            for seed in range(seeds):
                for a in resolve_arms(study):
                    out = run_dir(runs, task, a, seed)
                    cfg = {**COMMON, **b[task], "data": str(data[task]), "model": a.model,
                           "model_kwargs": a.build_kwargs, "seed": seed, "device": device, "output": str(out)}
                    if device == "cpu" and a.model.startswith(NCHW_ON_CPU):
                        cfg["channels_last"] = False
                    jobs.setdefault(out, (task, cfg))
    return jobs


def execute(jobs: Mapping[Path, tuple[str, dict[str, Any]]], n_jobs: int, threads: int,
            deadline: float | None = None) -> list[str]:
    """Run every job, n_jobs processes of `threads` threads each (in this process when n_jobs is 1); no run starts
    after `deadline` (time.time()). Returns one line per failed or skipped run."""
    failures: list[str] = []
    todo = list(jobs.items())
    print(f"{len(todo)} runs ({n_jobs} at a time, {threads} thread(s) each); logs in each run's train.log", flush=True)

    def late() -> bool:
        return deadline is not None and time.time() > deadline

    if n_jobs == 1:
        _init_worker(threads)
        for i, (out, (task, cfg)) in enumerate(todo, 1):
            _report(i, len(todo), out, "not started: deadline" if late() else _attempt(task, cfg), failures)
        return failures
    with ProcessPoolExecutor(n_jobs, mp_context=get_context("spawn"), initializer=_init_worker,
                             initargs=(threads,)) as pool:
        running: dict[Future, Path] = {}
        queue = list(todo)
        done = 0
        while queue or running:
            while queue and len(running) < n_jobs and not late():
                out, (task, cfg) = queue.pop(0)
                running[pool.submit(_attempt, task, cfg)] = out
            if not running:   # past the deadline with runs left
                for out, _ in queue:
                    done += 1
                    _report(done, len(todo), out, "not started: deadline", failures)
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                done += 1
                _report(done, len(todo), running.pop(fut), fut.result(), failures)
    return failures


def _attempt(task: str, cfg: dict[str, Any]) -> str | None:
    """train_one, turning a failure into its one-line message (one bad run must not stop the others)."""
    try:
        train_one(task, cfg)
        return None
    except Exception as e:   # noqa: BLE001 - reported per run and in the exit status
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def _report(i: int, n: int, out: Path, err: str | None, failures: list[str]) -> None:
    print(f"[{i}/{n}] {time.strftime('%H:%M:%S')} {out.name}: {'done' if err is None else 'FAILED ' + err}",
          flush=True)
    if err is not None:
        failures.append(f"{out}: {err}")


# ---- reading -------------------------------------------------------------------------------------------------
def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (nan with one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def compare(arm_values: Sequence[float], base_values: Sequence[float]) -> str:
    """Unpaired: 'better' / 'worse' when |mean difference| > sqrt(std_arm² + std_base²), else 'no difference';
    'n/a' without a spread (one seed)."""
    (ma, sa), (mb, sb) = mean_std(arm_values), mean_std(base_values)
    spread = math.hypot(sa, sb)
    if math.isnan(spread):
        return "n/a (1 seed)"
    if abs(ma - mb) <= spread:
        return "no difference"
    return "better" if ma > mb else "worse"


def compare_paired(arm_values: Mapping[int, float] | Sequence[float],
                   base_values: Mapping[int, float] | Sequence[float]) -> dict[str, Any]:
    """Paired by seed over the seeds both arms finished ({seed: value}, or a list indexed by seed): mean and std of the differences,
    t = mean / (std / √n), how many seeds went up, and the call: 'better' / 'worse' when |t| > Student's two-sided
    95 % point."""
    a, b = ({**v} if isinstance(v, Mapping) else dict(enumerate(v)) for v in (arm_values, base_values))
    d = [a[k] - b[k] for k in sorted(a.keys() & b.keys())]
    n = len(d)
    if n == 0:
        return {"mean": math.nan, "std": math.nan, "t": math.nan, "up": 0, "n": 0, "call": "n/a (no shared seed)"}
    mean, std = mean_std(d)
    if n < 2:
        return {"mean": mean, "std": std, "t": math.nan, "up": sum(x > 0 for x in d), "n": n, "call": "n/a (1 seed)"}
    t = math.copysign(math.inf, mean) if std == 0 and mean != 0 else (0.0 if std == 0 else mean / (std / math.sqrt(n)))
    call = "no difference" if abs(t) <= T95.get(n - 1, 1.96) else ("better" if t > 0 else "worse")
    return {"mean": mean, "std": std, "t": t, "up": sum(x > 0 for x in d), "n": n, "call": call}


def paired_text(p: Mapping[str, Any]) -> str:
    """'+1.20 ± 0.40, t 5.2, 3/3 up: better'."""
    std = "–" if math.isnan(p["std"]) else f"{p['std']:.2f}"
    t = "–" if math.isnan(p["t"]) else ("∞" if math.isinf(p["t"]) else f"{p['t']:.1f}")
    return f"{p['mean']:+.2f} ± {std}, t {t}, {p['up']}/{p['n']} up: {p['call']}"


def val_sampling_error(percent: float, n: int) -> float:
    """Binomial standard error, in points, of an accuracy of `percent` % measured on n images."""
    return math.sqrt(max(percent * (100 - percent), 0.0) / n) if n else math.nan


def measure_costs(specs: Sequence[str], res: int, device: str, repeats: int = 7) -> dict[str, dict[str, Any]]:
    """Params, GMACs and batch-1 latency of each model spec at res², interleaved in one linglo bench run."""
    from linglo.bench import BenchConfig, run_bench
    rows, _ = run_bench(BenchConfig(models=list(specs), resolutions=[res], device=device, warmup=min(2, repeats),
                                    repeats=repeats, throughput_batch=0, memory=False), log=lambda *_: None)
    return {r["model"]: r for r in rows}


def finished_runs(runs: Path, task: str, a: Arm, seeds: int) -> dict[int, dict[str, Any]]:
    """{seed: summary} of the arm's runs that finished (a killed or running run is left out)."""
    out = {}
    for seed in range(seeds):
        f = run_dir(runs, task, a, seed) / "summary.json"
        summary = json.loads(f.read_text()) if f.exists() else {}
        if summary.get("status") == "finished":
            out[seed] = summary
    return out


def collect(name: str, study: Study, budget: str, seeds: int, runs: Path, device: str) -> list[dict[str, Any]]:
    """One row per (task, arm) with at least one finished run: metrics over its finished seeds, the val split's
    sampling error, params, GMACs and latency, and the reading vs the baseline (unpaired and paired) and vs the
    study's references (paired, over the seeds both finished)."""
    arms = resolve_arms(study)
    cost_res = BUDGETS[budget]["cost_res"]
    rows = []
    for task in study.tasks:
        values: dict[Arm, dict[str, dict[int, float]]] = {}
        for a in arms:
            summaries = finished_runs(runs, task, a, seeds)
            if summaries:
                values[a] = {m: {k: s["last"][f"val_{m}"] for k, s in summaries.items()} for m in METRICS[task]}
                first = next(iter(summaries.values()))
                values[a]["meta"] = {"params_m": first["params"] / 1e6, "n_val": first["data"].get("images", {})
                                     .get("val", 0), "time_s": statistics.fmean(s["time_s"] for s in summaries.values())}
        done = [a for a in arms if a in values]
        costs = measure_costs([a.build_spec for a in done], cost_res, device, BUDGETS[budget].get("cost_repeats", 7))
        base = arms[0] if arms[0] in values else None
        refs = [r for r in dict.fromkeys((arms[0].label, *study.references)) if any(a.label == r for a in done)]
        by_label = {a.label: a for a in done}
        for a in done:
            v, meta, c = values[a], values[a]["meta"], costs[a.build_spec]
            row = {"study": name, "task": task, "arm": a.label, "model": a.build_spec, "seeds": len(v[METRICS[task][0]]),
                   "params_m": meta["params_m"], "backbone_params_m": backbone_params(a) / 1e6,
                   f"gmacs_{cost_res}": c["gmacs"], f"latency_ms_{cost_res}": c["latency_ms"],
                   "train_time_s": meta["time_s"], "val_images": int(meta["n_val"])}
            for m in METRICS[task]:
                mean, std = mean_std(list(v[m].values()))
                se = val_sampling_error(mean, meta["n_val"]) if task == "classify" else math.nan   # top-1: binomial
                row.update({f"{m}_mean": mean, f"{m}_std": std, f"{m}_val_se": se,
                            f"{m}_seeds": " ".join(f"{x:.2f}" for _, x in sorted(v[m].items())),
                            f"{m}_vs_base": "baseline" if a == base else ("n/a (baseline not run)" if base is None
                                                                           else compare(list(v[m].values()),
                                                                                        list(values[base][m].values())))})
                for r in refs:
                    row[f"{m}_paired_vs_{r}"] = "–" if a.label == r else paired_text(
                        compare_paired(v[m], values[by_label[r]][m]))
            rows.append(row)
    return rows


def write_results(name: str, rows: list[dict[str, Any]], out: Path, header: str, datasets: Mapping[str, str]) -> None:
    """results.csv, results.md (a markdown table) and results.png (mean ± std, one dot per seed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from linglo.atomic import atomic_savefig, atomic_write_text
    out.mkdir(parents=True, exist_ok=True)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, cols, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in r.items()} for r in rows)
    atomic_write_text(out / "results.csv", buf.getvalue())

    lat = next(c for c in cols if c.startswith("latency_ms_"))
    gm = next(c for c in cols if c.startswith("gmacs_"))
    lines = [header, ""]
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == task]
        ms = METRICS[task]
        paired = [c for c in cols if c.startswith(f"{ms[0]}_paired_vs_")]
        lines += [f"**{task}** ({datasets[task]}, {mine[0]['val_images']} val images)", "",
                  "| arm | model | params (M) | GMACs@" + gm.split("_")[-1] + " | latency ms@" + lat.split("_")[-1]
                  + " | " + " | ".join(f"{m} mean ± std (seeds) [± val SE] | unpaired vs baseline" for m in ms)
                  + "".join(f" | {ms[0]} paired vs {c.split('_paired_vs_')[1]}" for c in paired) + " |",
                  "|" + "---|" * (5 + 2 * len(ms) + len(paired))]
        for r in mine:
            cells = [r["arm"], f"`{r['model']}`", f"{r['params_m']:.2f}", f"{r[gm]:.3f}", f"{r[lat]:.1f}"]
            for m in ms:
                std = "–" if math.isnan(r[f"{m}_std"]) else f"{r[f'{m}_std']:.2f}"
                se = "–" if math.isnan(r[f"{m}_val_se"]) else f"{r[f'{m}_val_se']:.2f}"
                cells += [f"{r[f'{m}_mean']:.2f} ± {std} ({r[f'{m}_seeds']}) [± {se}]",
                          r[f"{m}_vs_base"]]
            cells += [r[c] for c in paired]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    atomic_write_text(out / "results.md", "\n".join(lines))

    panels = [(t, m) for t in dict.fromkeys(r["task"] for r in rows) for m in METRICS[t][:1]]
    fig, axes = plt.subplots(1, len(panels), figsize=(max(5.5, 0.9 * len(rows)) * len(panels), 4.5), squeeze=False)
    for ax, (task, m) in zip(axes[0], panels):
        mine = [r for r in rows if r["task"] == task]
        for i, r in enumerate(mine):
            seeds = [float(x) for x in r[f"{m}_seeds"].split()]
            ax.bar(i, r[f"{m}_mean"], yerr=0 if math.isnan(r[f"{m}_std"]) else r[f"{m}_std"], capsize=4,
                   color="tab:blue" if i == 0 else "tab:gray", alpha=0.6)
            ax.plot([i] * len(seeds), seeds, "k.", ms=5)
        ax.set_xticks(range(len(mine)), [f"{r['arm']}\n{r['params_m']:.2f}M" for r in mine], rotation=30,
                      ha="right", fontsize=7)
        lo = min(float(x) for r in mine for x in r[f"{m}_seeds"].split())
        ax.set_ylim(bottom=max(0.0, lo - 10))
        ax.set_ylabel(f"val {m} (last epoch)")
        ax.set_title(f"{name}: {task} on {datasets[task]}", fontsize=10)
    fig.tight_layout()
    atomic_savefig(fig, out / "results.png")
    plt.close(fig)


def run_cost(budget: str, device: str, out: Path) -> None:
    """Latency and peak memory of linglo_t with each token mixer against resolution (one linglo bench run);
    a size a mixer cannot run at (out of memory) is noted, not fatal."""
    from linglo.bench import BenchConfig, bench
    bench(BenchConfig(models=[f"linglo_t[token_mixer={m}]" for m in MIXERS], resolutions=BUDGETS[budget]["cost"],
                      device=device, warmup=1, repeats=3 if budget != "toy" else 1, throughput_batch=0,
                      skip_unsupported=True, output=out))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("study", nargs="+", choices=(*ALL, "all"), metavar="STUDY",
                   help=f"one or more of {', '.join(ALL)}, or all (the budget's list)")
    p.add_argument("--budget", choices=tuple(BUDGETS), default="cpu")
    p.add_argument("--seeds", type=int, default=None, help="seeds per arm (default: the budget's)")
    p.add_argument("--tasks", nargs="+", choices=tuple(METRICS), default=None,
                   help="train only these tasks of each study (default: the budget's)")
    p.add_argument("--jobs", type=int, default=None, help="runs at a time (default: the budget's, else 1)")
    p.add_argument("--threads", type=int, default=None, help="threads per run (default: the budget's, else "
                                                             "cores / jobs)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--data", type=Path, default=DATA, help="folder with the budget's datasets (default: "
                                                           "../shared/data)")
    p.add_argument("--runs", type=Path, default=None, help="run folders (default: runs/study/BUDGET)")
    p.add_argument("--results", type=Path, default=None, help="tables and plots (default: docs/study/BUDGET)")
    p.add_argument("--report", action="store_true",
                   help="train nothing: write the tables from the runs that finished so far (missing runs listed)")
    p.add_argument("--deadline-s", type=float, default=None,
                   help="start no run after this many seconds; tables are written for the studies that finished")
    args = p.parse_args(argv)
    b = BUDGETS[args.budget]
    names = list(dict.fromkeys(n for s in args.study for n in (b.get("all", ALL) if s == "all" else (s,))))
    seeds = args.seeds or b["seeds"]
    jobs = args.jobs or b.get("jobs", 1)
    if seeds < 1 or jobs < 1:
        p.error("--seeds and --jobs must be >= 1")
    deadline = None if args.deadline_s is None else time.time() + args.deadline_s
    runs = args.runs or Path("runs/study") / args.budget
    results = args.results or Path("docs/study") / args.budget
    threads = args.threads or b.get("threads") or max(1, (os.cpu_count() or 1) // jobs)
    wanted = tuple(args.tasks or b.get("tasks", tuple(METRICS)))
    studies = {n: replace(get_study(n), tasks=tuple(t for t in get_study(n).tasks if t in wanted))
               for n in names if n != "cost"}
    studies = {n: s for n, s in studies.items() if s.tasks}

    tasks = sorted({t for s in studies.values() for t in s.tasks})
    data = {t: prepare_data(t, b["data"][t], args.data / b["data"][t], runs / "data", b["prep"][t], b["limit"],
                            b["val_limit"]) for t in tasks}
    plan = plan_runs(list(studies.values()), args.budget, seeds, data, runs, args.device)
    failures = [] if args.report else execute(plan, jobs, threads, deadline)
    import torch
    torch.set_num_threads(os.cpu_count() or 1)
    for name, s in studies.items():
        missing = [f"{t} {a.label} seed {seed}" for t in s.tasks for a in resolve_arms(s)
                   for seed in sorted(set(range(seeds)) - set(finished_runs(runs, t, a, seeds)))]
        if len(missing) == len(s.tasks) * len(resolve_arms(s)) * seeds:
            print(f"{name}: no table (no run finished)")
            continue
        header = (f"### {name}: {s.claim}\n\nBudget `{args.budget}`, {seeds} seed(s), device {args.device}; "
                  f"recipe per task: " + "; ".join(f"{t}: `{json.dumps(b[t])}`" for t in s.tasks)
                  + f". Command: `python benchmarks/study.py {name} --budget {args.budget}"
                  + (f" --seeds {args.seeds}" if args.seeds else "") + (f" --jobs {args.jobs}" if args.jobs else "")
                  + (f" --tasks {' '.join(args.tasks)}" if args.tasks else "")
                  + (f" --device {args.device}" if args.device != "cpu" else "")
                  + (f" --results {args.results}" if args.results else "") + "`."
                  + (f"\n\nPartial: {len(missing)} of {len(s.tasks) * len(resolve_arms(s)) * seeds} runs not "
                     f"finished (seeds column = runs finished; paired readings use the seeds both arms finished): "
                     + "; ".join(missing) + "." if missing else ""))
        write_results(name, collect(name, s, args.budget, seeds, runs, args.device), results / name, header,
                      b["data"])
        print(f"{name}: wrote {results / name}/results.md, results.csv, results.png"
              + (f" ({len(missing)} run(s) missing)" if missing else ""))
    if "cost" in names:
        run_cost(args.budget, args.device, results / "cost")
    if failures:
        print("error: some runs failed or did not start (rerun the same command to retry them):\n  "
              + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
