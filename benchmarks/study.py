"""Ablation studies of the SPEC's claims, end to end: prepare the data, train every arm with every seed, read
back the metrics, measure params / GMACs / latency, write a table, a CSV and a plot per study.

    python benchmarks/study.py all --budget small --jobs 2       # every study, 2 CPU cores (about 1 h)
    python benchmarks/study.py mixer --budget small --jobs 2     # one study
    python benchmarks/study.py window --budget large --device cuda

Studies (SPEC claims in brackets):
    mixer   key_only vs softmax vs linear vs separable vs none, at equal parameter count: the MLP ratio of each
            arm is set so its backbone has the key-only backbone's parameters (claims 1-2)
    layout  alternate vs graft, same blocks, depth and width (claim 4)
    window  window 7 / 3 / 1 / 0 (global only), axial 7 vs square 7, with and without the global term (claim 2)
    peers   linglo_t vs the timm peers of its size row, same command (claim 5 at this scale); peers_xs, peers_s,
            peers_m: the other size rows
    cost    latency and peak memory of each mixer inside linglo_t against resolution (claim 3)
Trained studies run classification on hymenoptera and (mixer, layout, peers) Semantic FPN segmentation on
coco128_semseg, from ../shared/data (or --data). Every arm gets the same recipe, budget and seeds; an arm that
several studies share (linglo_t as it is) is trained once.

Budgets: toy (seconds; the tests), small (2 CPU cores within a session), large (a GPU). Images are resized
once to the budget's size into RUNS/data, so epochs do not decode multi-megapixel JPEGs again and again.

Resumable: each run is a `linglo train` run folder under RUNS; a finished run is read back, an interrupted
one resumes from its last.pt. Rerun the same command after an interruption.

Reading: per arm, mean ± sample std over seeds of the last epoch's val metric (not the best epoch: that
would select on the val set). An arm differs from the baseline only when |difference| exceeds the spread
sqrt(std_arm² + std_base²); smaller differences are reported as "no difference".
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
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Mapping, Sequence

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MIXERS = ("key_only", "softmax", "linear", "separable", "none")
METRICS = {"classify": ("top1",), "segment": ("mIoU", "aAcc")}
DATASETS = {"classify": "hymenoptera", "segment": "coco128_semseg"}


@dataclass(frozen=True)
class Arm:
    label: str
    model: str = "linglo_t"
    kwargs: tuple[tuple[str, Any], ...] = ()   # timm.create_model arguments, sorted (key, value) pairs
    equal_params: bool = False                 # set mlp_ratio so the backbone has the baseline's parameters

    @property
    def spec(self) -> str:
        """The model as `linglo bench --models` and the run folder name spell it: name[key=value,...]."""
        return self.model + (f"[{','.join(f'{k}={v}' for k, v in self.kwargs)}]" if self.kwargs else "")


def arm(label: str, model: str = "linglo_t", equal_params: bool = False, **kwargs: Any) -> Arm:
    return Arm(label, model, tuple(sorted(kwargs.items())), equal_params)


@dataclass(frozen=True)
class Study:
    claim: str
    tasks: tuple[str, ...]
    arms: tuple[Arm, ...]   # the first is the baseline


STUDIES: dict[str, Study] = {
    "mixer": Study("key-only attention vs the other token mixers at equal parameter count", ("classify", "segment"),
                   (arm("key_only"), *(arm(m, equal_params=True, token_mixer=m) for m in MIXERS[1:]))),
    "layout": Study("alternate layout (conv and attention blocks in every stage) vs graft", ("classify", "segment"),
                    (arm("alternate"), arm("graft", layout="graft"))),
    "window": Study("local window and global term of key-only attention", ("classify",),
                    (arm("7x7 + global"), arm("3x3 + global", window=3), arm("1x1 + global", window=1),
                     arm("global only", window=0), arm("7 axial + global", axial=True),
                     arm("7x7, no global", global_term=False))),
}


def _peer_study(variant: str) -> Study:
    """A LinGlo variant vs the timm peers of its SPEC size row (those that take any input size: the study trains
    at the budget's size, and timm builds efficientformerv2 / swin for 224² only)."""
    import timm

    from linglo.bench import PEERS
    peers = [m for m in PEERS[variant] if not timm.models.get_pretrained_cfg(m).fixed_input_size]
    return Study(f"{variant} vs the timm peers of its size row, same command", ("classify", "segment"),
                 (arm(variant, variant), *(arm(m, m) for m in peers)))


STUDIES.update({"peers" if v == "linglo_t" else f"peers_{v[len('linglo_'):]}": _peer_study(v)
                for v in ("linglo_t", "linglo_xs", "linglo_s", "linglo_m")})
ALL = (*STUDIES, "cost")

# Per budget: seeds, images kept per class / split (None = all), the size images are resized to (shorter
# side; None = keep), each task's `linglo train` recipe, the cost study's resolutions, and which studies
# `all` runs (default: every one).
BUDGETS: dict[str, dict[str, Any]] = {
    "toy": {"seeds": 1, "limit": 4, "prep": {"classify": 40, "segment": 64}, "cost": [32, 64],
            "classify": {"img_size": 32, "epochs": 1, "batch_size": 8, "lr": 1e-3, "warmup_epochs": 0,
                         "aa": "none", "reprob": 0.0, "mixup": 0.0, "cutmix": 0.0},
            "segment": {"img_size": 64, "epochs": 1, "batch_size": 4, "lr": 1e-3, "warmup_epochs": 0,
                        "head_channels": 16}},
    "small": {"seeds": 3, "limit": None, "all": ("mixer", "layout", "window", "peers", "peers_xs", "cost"),
              "prep": {"classify": 73, "segment": 128}, "cost": [128, 256, 512, 1024],
              "classify": {"img_size": 64, "epochs": 40, "batch_size": 32, "lr": 2e-3, "warmup_epochs": 3,
                           "aa": "none", "reprob": 0.0, "mixup": 0.0, "cutmix": 0.0, "drop_path": 0.05},
              "segment": {"img_size": 128, "epochs": 20, "batch_size": 8, "lr": 1e-3, "warmup_epochs": 2,
                          "clip_grad": 1.0, "head_channels": 64, "drop_path": 0.1}},
    "large": {"seeds": 5, "limit": None, "prep": {"classify": 256, "segment": 512},
              "cost": [256, 512, 1024, 2048, 4096],
              "classify": {"img_size": 224, "epochs": 300, "batch_size": 64, "lr": 1e-3, "warmup_epochs": 10,
                           "mixup": 0.0, "cutmix": 0.0},
              "segment": {"img_size": 512, "epochs": 200, "batch_size": 16, "lr": 2e-4, "warmup_epochs": 5,
                          "clip_grad": 1.0}},
}
COMMON = {"ema": False, "workers": 0, "overwrite": True}


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


def prepare_data(task: str, src: Path, dst_root: Path, short: int | None, limit: int | None) -> Path:
    """A resized copy of the task's dataset in its own layout (built once, in a temp folder then renamed)."""
    dst = dst_root / (f"{DATASETS[task]}-{short or 'full'}" + (f"-first{limit}" if limit else ""))
    if dst.is_dir():
        return dst
    if not src.is_dir():
        sys.exit(f"error: dataset folder '{src}' not found (pass --data DIR holding {DATASETS[task]}/)")
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if task == "classify":   # ImageFolder: split/class/image
        for split in ("train", "val"):
            for cls in sorted(p for p in (src / split).iterdir() if p.is_dir()):
                for f in sorted(cls.iterdir())[:limit]:
                    _resize(f, tmp / split / cls.name / (f.stem + ".png"), short, nearest=False)
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
    kwargs = dict(arm.kwargs, **({"mlp_ratio": mlp_ratio} if mlp_ratio is not None else {}))
    with torch.device("meta"):
        model = timm.create_model(arm.model, num_classes=0, **kwargs)
    return sum(p.numel() for p in model.parameters())


@lru_cache(maxsize=None)
def resolve_arms(study: Study) -> tuple[Arm, ...]:
    """Arms with equal_params get the mlp_ratio (a multiple of 1/64) that brings their backbone closest to the
    baseline's parameter count; the count grows with the ratio, so bisection finds it (once per study: planning
    and reading both ask)."""
    target = backbone_params(study.arms[0])
    out = []
    for a in study.arms:
        if a.equal_params:
            lo, hi = 64, 12 * 64
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if backbone_params(a, mid / 64) <= target else (lo, mid)
            k = min((lo, hi), key=lambda r: abs(backbone_params(a, r / 64) - target))
            a = Arm(a.label, a.model, tuple(sorted({**dict(a.kwargs), "mlp_ratio": k / 64}.items())))
        out.append(a)
    return tuple(out)


# ---- runs ----------------------------------------------------------------------------------------------------
def run_dir(runs: Path, task: str, a: Arm, seed: int) -> Path:
    name = a.spec.replace("[", "-").replace("]", "").replace(",", "-")
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
    """Every (task, arm, seed) the studies need, keyed by run folder (shared arms appear once)."""
    b = BUDGETS[budget]
    jobs: dict[Path, tuple[str, dict[str, Any]]] = {}
    for study in studies:
        for a in resolve_arms(study):
            for task in study.tasks:
                for seed in range(seeds):
                    out = run_dir(runs, task, a, seed)
                    cfg = {**COMMON, **b[task], "data": str(data[task]), "model": a.model,
                           "model_kwargs": dict(a.kwargs), "seed": seed, "device": device, "output": str(out)}
                    jobs[out] = (task, cfg)
    return jobs


def execute(jobs: Mapping[Path, tuple[str, dict[str, Any]]], n_jobs: int, threads: int) -> list[str]:
    """Run every job (n_jobs processes of `threads` threads each, or in this process when n_jobs is 1);
    returns one line per failed run."""
    failures: list[str] = []
    todo = list(jobs.items())
    print(f"{len(todo)} runs ({n_jobs} at a time, {threads} thread(s) each); logs in each run's train.log")
    if n_jobs == 1:
        _init_worker(threads)
        results = ((out, _attempt(task, cfg)) for out, (task, cfg) in todo)
        for i, (out, err) in enumerate(results, 1):
            _report(i, len(todo), out, err, failures)
        return failures
    with ProcessPoolExecutor(n_jobs, mp_context=get_context("spawn"), initializer=_init_worker,
                             initargs=(threads,)) as pool:
        futures = [(out, pool.submit(_attempt, task, cfg)) for out, (task, cfg) in todo]
        for i, (out, fut) in enumerate(futures, 1):
            _report(i, len(todo), out, fut.result(), failures)
    return failures


def _attempt(task: str, cfg: dict[str, Any]) -> str | None:
    """train_one, turning a failure into its one-line message (one bad run must not stop the others)."""
    try:
        train_one(task, cfg)
        return None
    except Exception as e:   # noqa: BLE001 - reported per run and in the exit status
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def _report(i: int, n: int, out: Path, err: str | None, failures: list[str]) -> None:
    print(f"[{i}/{n}] {out.name}: {'done' if err is None else 'FAILED ' + err}", flush=True)
    if err is not None:
        failures.append(f"{out}: {err}")


# ---- reading -------------------------------------------------------------------------------------------------
def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (nan with one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def compare(arm_values: Sequence[float], base_values: Sequence[float]) -> str:
    """'better' / 'worse' when |mean difference| > sqrt(std_arm² + std_base²), else 'no difference';
    'n/a' without a spread (one seed)."""
    (ma, sa), (mb, sb) = mean_std(arm_values), mean_std(base_values)
    spread = math.hypot(sa, sb)
    if math.isnan(spread):
        return "n/a (1 seed)"
    if abs(ma - mb) <= spread:
        return "no difference"
    return "better" if ma > mb else "worse"


def measure_costs(specs: Sequence[str], res: int, device: str) -> dict[str, dict[str, Any]]:
    """Params, GMACs and batch-1 latency of each model spec at res², interleaved in one linglo bench run."""
    from linglo.bench import BenchConfig, run_bench
    rows, _ = run_bench(BenchConfig(models=list(specs), resolutions=[res], device=device, warmup=2, repeats=7,
                                    throughput_batch=0, memory=False), log=lambda *_: None)
    return {r["model"]: r for r in rows}


def collect(name: str, study: Study, budget: str, seeds: int, runs: Path, device: str) -> list[dict[str, Any]]:
    """One row per (task, arm): metrics over seeds, params, GMACs and latency, and the reading vs the baseline."""
    arms = resolve_arms(study)
    cost_res = 224 if budget != "toy" else 64
    costs = measure_costs([a.spec for a in arms], cost_res, device)
    rows = []
    for task in study.tasks:
        values: dict[Arm, dict[str, list[float]]] = {}
        for a in arms:
            summaries = [json.loads((run_dir(runs, task, a, s) / "summary.json").read_text()) for s in range(seeds)]
            values[a] = {m: [s["last"][f"val_{m}"] for s in summaries] for m in METRICS[task]}
            values[a]["params_m"] = [summaries[0]["params"] / 1e6]
            values[a]["time_s"] = [s["time_s"] for s in summaries]
        base = values[arms[0]]
        for a in arms:
            v, c = values[a], costs[a.spec]
            row = {"study": name, "task": task, "arm": a.label, "model": a.spec, "seeds": seeds,
                   "params_m": v["params_m"][0], "backbone_params_m": backbone_params(a) / 1e6,
                   f"gmacs_{cost_res}": c["gmacs"], f"latency_ms_{cost_res}": c["latency_ms"],
                   "train_time_s": statistics.fmean(v["time_s"])}
            for m in METRICS[task]:
                mean, std = mean_std(v[m])
                row.update({f"{m}_mean": mean, f"{m}_std": std, f"{m}_seeds": " ".join(f"{x:.2f}" for x in v[m]),
                            f"{m}_vs_base": "baseline" if a == arms[0] else compare(v[m], base[m])})
            rows.append(row)
    return rows


def write_results(name: str, rows: list[dict[str, Any]], out: Path, header: str) -> None:
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
        lines += [f"**{task}** ({DATASETS[task]})", "",
                  "| arm | model | params (M) | GMACs@" + gm.split("_")[-1] + " | latency ms@" + lat.split("_")[-1]
                  + " | " + " | ".join(f"{m} mean ± std (seeds) | vs baseline" for m in ms) + " |",
                  "|" + "---|" * (5 + 2 * len(ms))]
        for r in mine:
            cells = [r["arm"], f"`{r['model']}`", f"{r['params_m']:.2f}", f"{r[gm]:.3f}", f"{r[lat]:.1f}"]
            for m in ms:
                std = "–" if math.isnan(r[f"{m}_std"]) else f"{r[f'{m}_std']:.2f}"
                cells += [f"{r[f'{m}_mean']:.2f} ± {std} ({r[f'{m}_seeds']})", r[f"{m}_vs_base"]]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    atomic_write_text(out / "results.md", "\n".join(lines))

    panels = [(t, m) for t in dict.fromkeys(r["task"] for r in rows) for m in METRICS[t][:1]]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (task, m) in zip(axes[0], panels):
        mine = [r for r in rows if r["task"] == task]
        for i, r in enumerate(mine):
            seeds = [float(x) for x in r[f"{m}_seeds"].split()]
            ax.bar(i, r[f"{m}_mean"], yerr=0 if math.isnan(r[f"{m}_std"]) else r[f"{m}_std"], capsize=4,
                   color="tab:blue" if i == 0 else "tab:gray", alpha=0.6)
            ax.plot([i] * len(seeds), seeds, "k.", ms=5)
        ax.set_xticks(range(len(mine)), [f"{r['arm']}\n{r['params_m']:.2f}M" for r in mine], rotation=30,
                      ha="right", fontsize=8)
        ax.set_ylabel(f"val {m} (last epoch)")
        ax.set_title(f"{name}: {task} on {DATASETS[task]}", fontsize=10)
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
    p.add_argument("study", choices=(*ALL, "all"))
    p.add_argument("--budget", choices=tuple(BUDGETS), default="small")
    p.add_argument("--seeds", type=int, default=None, help="seeds per arm (default: the budget's)")
    p.add_argument("--tasks", nargs="+", choices=tuple(METRICS), default=tuple(METRICS),
                   help="train only these tasks of each study (default: all of them)")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (CPU: one per core, 1 thread each)")
    p.add_argument("--threads", type=int, default=None, help="threads per run (default: cores / jobs)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--data", type=Path, default=DATA, help=f"folder with {' and '.join(DATASETS.values())}/")
    p.add_argument("--runs", type=Path, default=None, help="run folders (default: runs/study/BUDGET)")
    p.add_argument("--results", type=Path, default=None, help="tables and plots (default: docs/study/BUDGET)")
    args = p.parse_args(argv)
    names = BUDGETS[args.budget].get("all", ALL) if args.study == "all" else (args.study,)
    seeds = args.seeds or BUDGETS[args.budget]["seeds"]
    if seeds < 1 or args.jobs < 1:
        p.error("--seeds and --jobs must be >= 1")
    runs = args.runs or Path("runs/study") / args.budget
    results = args.results or Path("docs/study") / args.budget
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    studies = {n: replace(STUDIES[n], tasks=tuple(t for t in STUDIES[n].tasks if t in args.tasks))
               for n in names if n in STUDIES}
    studies = {n: s for n, s in studies.items() if s.tasks}

    b = BUDGETS[args.budget]
    tasks = sorted({t for s in studies.values() for t in s.tasks})
    data = {t: prepare_data(t, args.data / DATASETS[t], runs / "data", b["prep"][t], b["limit"]) for t in tasks}
    failures = execute(plan_runs(list(studies.values()), args.budget, seeds, data, runs, args.device), args.jobs,
                       threads)
    if failures:
        print("error: some runs failed (rerun the same command to retry them):\n  " + "\n  ".join(failures),
              file=sys.stderr)
        return 1
    import torch
    torch.set_num_threads(os.cpu_count() or 1)
    for name, s in studies.items():
        header = (f"### {name}: {s.claim}\n\nBudget `{args.budget}`, {seeds} seed(s), device {args.device}; "
                  f"recipe per task: " + "; ".join(f"{t}: `{json.dumps(b[t])}`" for t in s.tasks)
                  + f". Command: `python benchmarks/study.py {name} --budget {args.budget} --jobs {args.jobs}"
                  + (f" --seeds {args.seeds}" if args.seeds else "")
                  + (f" --tasks {' '.join(args.tasks)}" if tuple(args.tasks) != tuple(METRICS) else "")
                  + (f" --results {args.results}" if args.results else "") + "`.")
        write_results(name, collect(name, s, args.budget, seeds, runs, args.device), results / name, header)
        print(f"{name}: wrote {results / name}/results.md, results.csv, results.png")
    if "cost" in names:
        run_cost(args.budget, args.device, results / "cost")
    return 0


if __name__ == "__main__":
    sys.exit(main())
