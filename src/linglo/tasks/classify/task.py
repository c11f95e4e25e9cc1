"""Image classification: ImageFolder data, the DeiT/timm recipe, top-1/top-5, confusion matrix.

Metrics: loss (plain cross-entropy), top1, top5 (only with more than 5 classes), mean_class_acc
(balanced accuracy), per_class_acc and confusion_matrix (rows: true class).

Data is a folder `ROOT/{train,val}/<class>/<image>` or a built-in name ("default": the small
object-vs-person crop set shipped in linglo/assets). An optional `ROOT/classes.txt` (lines "folder<TAB>name",
as Imagenette ships) gives the class names shown in tables, the confusion matrix and predictions.
Augmentation is timm's create_transform with the DeiT defaults (RandAugment rand-m9-mstd0.5-inc1, random
erasing 0.25, colour jitter 0.3), Mixup 0.8 / CutMix 1.0 with label smoothing 0.1; drop_path goes to the timm
model. Mean, std, eval crop_pct and interpolation are the model's pretrained_cfg (timm.data.resolve_data_config;
LinGlo: ImageNet mean/std, crop 0.9, bicubic), each overridden only by its flag when given. Without RandAugment
(--aa none) the images are decoded once into memory and batches are augmented as tensors on the training device
(tasks.classify.decoded; --data-cache).
"""
from __future__ import annotations

import functools
import math
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

import timm
import torch
import torch.nn.functional as F
from timm.data import Mixup, create_transform, resolve_data_config
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import nn

from linglo.errors import LingloError
from linglo.tasks.base import Batch, Task
from linglo.tasks.classify.data import CheckedImageFolder, collate_readable, split_dir
from linglo.tasks.classify.decoded import BatchAugment, DecodedImages, batch_key, physical_memory, train_side
from linglo.tasks.images import UNREADABLE, keyed_rng, load_rgb
from linglo.models.names import check_model_name, create_model
from linglo.tasks.classify.posterize_guard import guard_posterize

BUILTIN_DATASETS = {"default": "assets/default_dataset"}
CLASS_NAMES_FILE = "classes.txt"
DATA_CONFIG_KEYS = ("mean", "std", "crop_pct", "interpolation")   # from the model's pretrained_cfg unless given
CACHE_MEMORY_FRACTION = 0.25   # --data-cache auto decodes into memory when both splits fit in this share of RAM
# `linglo demo`: the recipe scaled to ~150 images of 64 px and a few minutes on 2 CPU cores.
DEMO_CONFIG = {"data": "default", "model": "linglo_t", "img_size": 64, "epochs": 15, "batch_size": 32,
               "lr": 2e-3, "warmup_epochs": 2, "aa": "none", "reprob": 0.0, "mixup": 0.0, "cutmix": 0.0,
               "drop_path": 0.05, "ema": False, "workers": 2}


def resolve_data(data: str | None) -> Path:
    """A dataset folder from --data: an existing folder, or a built-in name."""
    if not data:
        raise LingloError(f"--data is required: a dataset folder or a built-in name ({', '.join(BUILTIN_DATASETS)})")
    path = Path(data).expanduser()
    if path.is_dir():
        return path
    if data in BUILTIN_DATASETS:
        return Path(str(resources.files("linglo") / BUILTIN_DATASETS[data]))
    raise LingloError(f"dataset '{data}' not found: not a folder, and not a built-in name "
                      f"({', '.join(BUILTIN_DATASETS)})")


class ClassifyTask(Task):
    name = "classify"
    primary_metric = "top1"
    higher_is_better = True
    collate_fn = staticmethod(collate_readable)
    defaults = {
        "model": "linglo_t",
        "scale": [0.08, 1.0],           # RandomResizedCrop area range
        "aa": "rand-m9-mstd0.5-inc1",   # RandAugment (timm spelling); "" or "none" = off
        "color_jitter": 0.3,            # used by timm only when aa is off
        "reprob": 0.25,
        "remode": "pixel",
        "mixup": 0.8,
        "cutmix": 1.0,
        "mixup_prob": 1.0,
        "mixup_switch_prob": 0.5,
        "smoothing": 0.1,
        "drop_path": 0.1,
        "interpolation": None,          # None: the model's pretrained_cfg (as mean, std and crop_pct)
        "crop_pct": None,
        "mean": None,
        "std": None,
        "topk": 5,
        "data_cache": "auto",           # memory: decode once, augment tensors | off: PIL per image | auto
    }
    optional_types = {"interpolation": str, "crop_pct": float, "mean": list, "std": list}

    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__(cfg)
        check_model_name(self.cfg["model"])   # before scanning a large dataset
        self.data_config = data_config(self.cfg)
        self.mixup: Mixup | None = None
        self.sizes: dict[str, int] = {}
        self.skipped: list[str] = []
        self.cached: dict[str, str] = {}
        self.augment: BatchAugment | None = None
        if self.cfg["data_cache"] not in ("auto", "memory", "off"):
            raise LingloError(f"--data-cache must be auto, memory or off, got {self.cfg['data_cache']!r}")
        if self.cfg["data_cache"] == "memory" and self._aa():
            raise LingloError(f"--data-cache memory augments tensors, which --aa {self.cfg['aa']} cannot: "
                              "pass --aa none, or --data-cache off")
        if self.cfg["topk"] < 1:
            raise LingloError(f"--topk must be >= 1 (labels shown per image), got {self.cfg['topk']}")
        if self._mixup_on() and self.cfg["batch_size"] % 2:
            raise LingloError(f"--batch-size must be even with mixup/cutmix on (got {self.cfg['batch_size']}); "
                              "or pass --mixup 0 --cutmix 0")
        self.criterion = self._criterion()

    def _mixup_on(self) -> bool:
        c = self.cfg
        return (c["mixup"] > 0 or c["cutmix"] > 0) and c["mixup_prob"] > 0

    def _aa(self) -> str | None:
        aa = self.cfg["aa"]
        return aa if aa and aa.lower() != "none" else None

    # ---- data -------------------------------------------------------------------------------
    def transform(self, train: bool):
        c, d = self.cfg, self.data_config
        if train:
            t = create_transform(c["img_size"], is_training=True, scale=tuple(c["scale"]), auto_augment=self._aa(),
                                 color_jitter=c["color_jitter"], re_prob=c["reprob"],
                                 re_mode=c["remode"], interpolation=d["interpolation"], mean=d["mean"], std=d["std"])
            guard_posterize(t)
            return t
        return create_transform(c["img_size"], is_training=False, interpolation=d["interpolation"],
                                crop_pct=d["crop_pct"], mean=d["mean"], std=d["std"])

    def build_dataset(self, split: str) -> CheckedImageFolder | DecodedImages:
        root = resolve_data(self.cfg["data"])
        train = split == "train"
        folder = CheckedImageFolder(split_dir(root, split), self.transform(train), substitute=train,
                                    seed=self.cfg["seed"])
        names = class_names(root, list(folder.classes))
        if not self.meta:
            self.meta = {"num_classes": len(names), "class_names": names}
        elif self.meta["class_names"] != names:
            raise LingloError(f"classes of '{folder.root}' {names} differ from the train split's "
                              f"{self.meta['class_names']}")
        ds: CheckedImageFolder | DecodedImages = folder
        skipped = list(folder.skipped)
        if self._use_cache(len(folder), train):
            ds = self._decode(folder, train)
            skipped += ds.skipped
        self.sizes[split] = len(ds)
        self.skipped += skipped
        if skipped:
            print(f"warning: skipped {len(skipped)} unreadable image(s) in {folder.root} (first: {skipped[0]})")
        return ds

    def _use_cache(self, n: int, train: bool) -> bool:
        """--data-cache auto: memory when the recipe has no PIL-only augmentation (RandAugment) and both splits'
        uint8 copies fit in CACHE_MEMORY_FRACTION of RAM (the val split is estimated at the train split's size)."""
        mode = self.cfg["data_cache"]
        if mode != "auto":
            return mode == "memory"
        if self._aa():
            return False
        side = train_side(self.cfg["img_size"]) if train else self.cfg["img_size"]
        ram = physical_memory()
        return ram is None or 2 * n * 3 * side * side <= CACHE_MEMORY_FRACTION * ram

    def _decode(self, folder: CheckedImageFolder, train: bool) -> DecodedImages:
        """The split decoded once: train as squares to crop from, val through timm's eval transform itself."""
        c, d = self.cfg, self.data_config
        side = train_side(c["img_size"]) if train else c["img_size"]
        to_uint8 = create_transform(side, is_training=False, interpolation=d["interpolation"],
                                    crop_pct=1.0 if train else d["crop_pct"], use_prefetcher=True)
        decode_side = side if train else math.ceil(c["img_size"] / d["crop_pct"])   # what the resize needs
        ds = DecodedImages(folder.samples, to_uint8, side, load=functools.partial(load_rgb, draft=decode_side))
        self.cached["train" if train else "val"] = f"memory, {ds.nbytes / 2**20:.0f} MiB, decoded in {ds.seconds:.1f} s"
        if train:
            self.augment = BatchAugment(c["img_size"], c["scale"], d["mean"], d["std"],
                                        color_jitter=c["color_jitter"], re_prob=c["reprob"], re_mode=c["remode"])
        return ds

    def workers(self) -> int:
        """Decoded data is sliced from memory: loader workers would only add copies."""
        return 0 if self.cached else self.cfg["workers"]

    # ---- model and loss ---------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        c = self.cfg
        kwargs: dict[str, Any] = {**c["model_kwargs"], "num_classes": self.meta["num_classes"]}
        optional = {"drop_path_rate": c["drop_path"]} if c["drop_path"] else {}
        pcfg = timm.models.get_pretrained_cfg(c["model"])
        if pcfg is not None and pcfg.fixed_input_size:
            kwargs["img_size"] = c["img_size"]
        try:
            return create_model(c["model"], optional, pretrained=False, **kwargs)
        except (TypeError, ValueError) as e:
            raise LingloError(f"model '{c['model']}' rejected its arguments {kwargs}: {e}") from e

    def _criterion(self) -> nn.Module:
        if self._mixup_on():
            return SoftTargetCrossEntropy()  # mixup already smoothed the targets
        if self.cfg["smoothing"] > 0:
            return LabelSmoothingCrossEntropy(self.cfg["smoothing"])
        return nn.CrossEntropyLoss()

    def to_batch(self, raw: Any, device: torch.device, train: bool) -> Batch:
        # collate_readable appends the paths the PIL pipeline could not decode in evaluation (a list, not a tensor)
        *raw, unreadable = raw if isinstance(raw[-1], list) else (*raw, [])
        self.skipped += [p for p in unreadable if p not in self.skipped]
        if raw[0] is None:       # no image of the batch decoded
            return Batch(None, None, 0)
        x, y = raw[0].to(device, non_blocking=True), raw[1].to(device, non_blocking=True)   # x: B×3×H×W, y: B
        if x.dtype != torch.uint8:   # PIL pipeline: augmented in the loader
            return Batch(*self._mixup(x, y) if train else (x, y), len(x))
        if not train:                # decoded val cache: (B, 3, H, W) uint8
            return Batch(self._eval_normalize(x), y, len(x))
        with keyed_rng(batch_key(self.cfg["seed"], raw[2]), device):   # every draw of this batch, from its images
            x, y = self._mixup(self.augment(x), y)                     # (B, 3, S, S) uint8 -> (B, 3, size, size)
        return Batch(x, y, len(x))

    def _mixup(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixup / CutMix of a train batch when the recipe has them (y becomes B×num_classes soft targets)."""
        if not self._mixup_on():
            return x, y
        if self.mixup is None:
            c = self.cfg
            self.mixup = Mixup(mixup_alpha=c["mixup"], cutmix_alpha=c["cutmix"], prob=c["mixup_prob"],
                               switch_prob=c["mixup_switch_prob"], label_smoothing=c["smoothing"],
                               num_classes=self.meta["num_classes"])
        return self.mixup(x, y)

    def _eval_normalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.augment is None:   # eval-only run: no train split was built
            self.augment = BatchAugment(self.cfg["img_size"], self.cfg["scale"], self.data_config["mean"],
                                        self.data_config["std"])
        return self.augment.normalize(x)

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        return self.criterion(model(batch.inputs).float(), batch.targets), {}

    # ---- evaluation ---------------------------------------------------------------------------
    def eval_begin(self) -> dict[str, Any]:
        n = self.meta["num_classes"]
        return {"confusion": torch.zeros(n, n, dtype=torch.long), "loss_sum": 0.0, "topk_correct": 0}

    def eval_step(self, model: nn.Module, batch: Batch, state: dict[str, Any]) -> None:
        if batch.size == 0:
            return
        n = self.meta["num_classes"]
        logits = model(batch.inputs).float()                  # B×n
        y = batch.targets
        state["loss_sum"] += F.cross_entropy(logits, y, reduction="sum").item()
        pred = logits.argmax(1)                                # B
        state["confusion"] += torch.bincount((y * n + pred).cpu(), minlength=n * n).view(n, n)
        topk = logits.topk(min(5, n), dim=1).indices           # B×k
        state["topk_correct"] += int((topk == y[:, None]).any(1).sum())

    def eval_end(self, states: Sequence[dict[str, Any]]) -> dict[str, Any]:
        conf = sum(s["confusion"] for s in states)            # rows: true class, cols: predicted
        total = int(conf.sum())
        if total == 0:
            raise LingloError("evaluation saw no images")
        per_class = conf.diag().double() / conf.sum(1).clamp(min=1)
        present = conf.sum(1) > 0                             # classes with val images
        names = self.meta["class_names"]
        top5 = {"top5": 100.0 * sum(s["topk_correct"] for s in states) / total} if len(names) > 5 else {}
        return {
            "loss": sum(s["loss_sum"] for s in states) / total,
            "top1": 100.0 * float(conf.diag().sum()) / total,
            **top5,                                           # always 100 with 5 classes or fewer
            "mean_class_acc": 100.0 * float(per_class[present].mean()),  # balanced accuracy
            "per_class_acc": {name: 100.0 * float(a) for name, a in zip(names, per_class)},
            "confusion_matrix": conf.tolist(),
            "class_names": names,
        }

    def eval_report(self, metrics: Mapping[str, Any], out_dir: Path | None) -> list[Any]:
        from linglo.tasks.classify.report import confusion_figure, per_class_table
        if out_dir is not None:
            confusion_figure(metrics, out_dir / "confusion_matrix.png")
        return [per_class_table(metrics)]

    # ---- prediction ---------------------------------------------------------------------------
    def predict(self, model: nn.Module, files: Sequence[Path], device: torch.device,
                out_dir: Path | None) -> list[dict[str, Any]]:
        tf = self.transform(train=False)
        names = self.meta["class_names"]
        k = min(self.cfg["topk"], len(names))
        results: list[dict[str, Any]] = []
        readable: list[tuple[int, torch.Tensor]] = []   # (index in results, 3×H×W)
        for path in files:
            results.append({"file": str(path)})
            try:
                readable.append((len(results) - 1, tf(load_rgb(path))))
            except UNREADABLE as e:
                results[-1]["error"] = f"unreadable image, skipped: {e}"
        bs = self.cfg["batch_size"]
        for start in range(0, len(readable), bs):
            chunk = readable[start:start + bs]
            x = torch.stack([t for _, t in chunk]).to(device)        # B×3×H×W
            p, idx = model(x).float().softmax(1).topk(k, dim=1)       # B×k
            for (r, _), ps, ids in zip(chunk, p.tolist(), idx.tolist()):
                results[r]["top"] = [{"label": names[j], "prob": q} for q, j in zip(ps, ids)]
        return results

    def predict_report(self, predictions: Sequence[Mapping[str, Any]]) -> list[Any]:
        from linglo.tasks.classify.report import predictions_table
        return [predictions_table(predictions)]

    def describe(self) -> dict[str, Any]:
        return {"data": str(resolve_data(self.cfg["data"])), "images": dict(self.sizes),
                "class_names": self.meta.get("class_names"), "skipped_images": len(self.skipped),
                "skipped_files": self.skipped[:20], "decoded_cache": dict(self.cached) or "off",
                "data_config": {k: self.data_config[k] for k in DATA_CONFIG_KEYS}}


def data_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """timm's data config of the run's model (timm.data.resolve_data_config of its pretrained_cfg): mean, std,
    crop_pct and interpolation, each taken from the run's flag instead when that was given."""
    given = {k: tuple(cfg[k]) if k in ("mean", "std") else cfg[k] for k in DATA_CONFIG_KEYS if cfg[k] is not None}
    for key in ("mean", "std"):
        if key in given and len(given[key]) != 3:
            raise LingloError(f"--{key} takes 3 values (R G B), got {list(given[key])}")
    if "crop_pct" in given and not 0 < given["crop_pct"] <= 1:
        raise LingloError(f"--crop-pct must be in (0, 1], got {given['crop_pct']}")
    return resolve_data_config(given, pretrained_cfg=timm.models.get_pretrained_cfg(cfg["model"]).to_dict())


def class_names(root: Path, folders: list[str]) -> list[str]:
    """Display names of the class folders: from ROOT/classes.txt ("folder<TAB>name" per line, e.g. Imagenette's
    "n01440764<TAB>tench") when present; a folder it does not list keeps its own name."""
    path = root / CLASS_NAMES_FILE
    if not path.is_file():
        return folders
    names: dict[str, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        folder, sep, name = line.strip().partition("\t") if "\t" in line else line.strip().partition(" ")
        if not sep or not name.strip():
            raise LingloError(f"'{path}' line {n}: expected 'folder<TAB>name', got {line.strip()!r}")
        names[folder.strip()] = name.strip()
    shown = [names.get(f, f) for f in folders]
    if len(set(shown)) != len(shown):
        raise LingloError(f"'{path}' gives two class folders the same name: {shown}")
    return shown
