"""Classify task: the RandAugment posterize guard, hand-checked metrics, dataset errors, predict."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from timm.data import auto_augment
from torch import nn

from linglo.engine.config import resolve
from linglo.errors import LingloError
from linglo.tasks.base import Batch
from linglo.tasks.classify.task import ClassifyTask
from linglo.tasks.classify.posterize_guard import guard_posterize, safe_posterize


def make_task(**overrides) -> ClassifyTask:
    cfg = resolve(ClassifyTask.defaults, ClassifyTask.optional_types,
                  cli_cfg={"img_size": 32, "batch_size": 4, "workers": 0, **overrides})
    return ClassifyTask(cfg)


def photo(size: int = 48) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


# ---- posterize guard --------------------------------------------------------------------------------
def test_pillow_rejects_zero_bits_so_the_guard_is_needed():
    with pytest.raises(ValueError, match="bits"):
        auto_augment.posterize(photo(), 0)


def test_safe_posterize_keeps_old_behaviour():
    img = photo()
    assert np.asarray(safe_posterize(img, 0)).max() == 0                       # 0 bits: black
    assert np.array_equal(np.asarray(safe_posterize(img, 3)), np.asarray(ImageOps.posterize(img, 3)))
    assert safe_posterize(img, 8) is img


def test_deit_recipe_survives_forced_zero_bit_posterize():
    task = make_task()
    tf = task.transform(train=True)                     # rand-m9-mstd0.5-inc1, guarded
    ra = next(t for t in tf.transforms if isinstance(t, auto_augment.RandAugment))
    posterize_ops = [op for op in ra.ops if op.name == "PosterizeIncreasing"]
    assert posterize_ops and all(op.aug_fn is safe_posterize for op in posterize_ops)
    # Every op is now a certain, maximal-magnitude posterize: 0 bits kept, every time.
    forced = posterize_ops[0]
    forced.prob, forced.magnitude, forced.magnitude_std = 1.0, 10, 0
    assert forced.level_fn(10, forced.hparams) == (0,)
    ra.ops = [forced] * len(ra.ops)
    random.seed(0)
    np.random.seed(0)
    for _ in range(50):
        x = tf(photo())
        assert x.shape == (3, 32, 32) and torch.isfinite(x).all()


def test_guard_counts_ops_in_auto_augment_policies():
    tf = auto_augment.auto_augment_transform("original", {})
    assert guard_posterize(tf) > 0
    assert guard_posterize(tf) == 0  # already guarded


# ---- metrics by hand ---------------------------------------------------------------------------------
class FixedLogits(nn.Module):
    """Returns the logits stored for each batch, in order."""

    def __init__(self, logits):
        super().__init__()
        self.logits = list(logits)

    def forward(self, x):
        return self.logits.pop(0)


def test_eval_matches_hand_computation():
    task = make_task()
    task.meta = {"num_classes": 6, "class_names": list("abcdef")}
    logits = [torch.tensor([[5., 4, 3, 2, 1, 0],     # true 0: top1 right
                            [0., 1, 2, 3, 4, 5],     # true 0: rank 6 -> wrong in top1 and top5
                            [1., .5, 0, .1, .2, -1]]),  # true 1: rank 2 -> wrong, but in top5
              torch.tensor([[0., 0, 9, 0, 0, 0],     # true 2: right
                            [3., .5, .4, 1, 2, 0]])]  # true 5: rank 6 -> wrong in top1 and top5
    targets = [torch.tensor([0, 0, 1]), torch.tensor([2, 5])]
    model = FixedLogits([t.clone() for t in logits])
    states = [task.eval_begin(), task.eval_begin()]   # as if two ranks, one batch each
    for state, x, y in zip(states, logits, targets):
        task.eval_step(model, Batch(x, y, len(y)), state)
    m = task.eval_end(states)

    all_logits, all_y = torch.cat(logits), torch.cat(targets)
    nll = [-math.log(math.exp(row[t]) / sum(math.exp(v) for v in row))
           for row, t in zip(all_logits.tolist(), all_y.tolist())]
    assert m["loss"] == pytest.approx(sum(nll) / 5)
    # argmax: 0, 5, 0, 2, 0 vs targets 0, 0, 1, 2, 5 -> 2 of 5
    assert m["top1"] == pytest.approx(40.0)
    # target within the 5 highest logits: yes, no, yes, yes, no
    assert m["top5"] == pytest.approx(60.0)
    expected = [[0] * 6 for _ in range(6)]
    for t, p in [(0, 0), (0, 5), (1, 0), (2, 2), (5, 0)]:
        expected[t][p] += 1
    assert m["confusion_matrix"] == expected
    assert m["per_class_acc"] == {"a": 50.0, "b": 0.0, "c": 100.0, "d": 0.0, "e": 0.0, "f": 0.0}
    assert m["mean_class_acc"] == pytest.approx((50 + 0 + 100 + 0) / 4)   # d and e have no images


# ---- data errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("breakage, message", [
    ("missing", "not found: not a folder"),
    ("no_train", "has no train/ folder"),
    ("no_classes", "has no class folders"),
    ("empty_class", "has no readable images"),
    ("val_classes", "differ from the train split's"),
])
def test_dataset_errors_are_one_line(tiny_folder, breakage, message):
    data = tiny_folder
    if breakage == "missing":
        data = tiny_folder / "nope"
    elif breakage == "no_train":
        (tiny_folder / "train").rename(tiny_folder / "training")
    elif breakage == "no_classes":
        for d in (tiny_folder / "train").iterdir():
            for f in d.iterdir():
                f.unlink()
            d.rmdir()
    elif breakage == "empty_class":
        (tiny_folder / "train" / "wasps").mkdir()
        (tiny_folder / "train" / "wasps" / "notes.txt").write_text("not an image")
    elif breakage == "val_classes":
        (tiny_folder / "val" / "bees").rename(tiny_folder / "val" / "wasps")
    task = make_task(data=str(data))
    with pytest.raises(LingloError, match=message) as e:
        task.build_dataset("train")
        task.build_dataset("val")
    assert "\n" not in str(e.value)


def test_unreadable_images_are_skipped_and_counted(tiny_folder):
    (tiny_folder / "train" / "ants" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (tiny_folder / "train" / "bees" / "empty.png").write_bytes(b"")
    task = make_task(data=str(tiny_folder))
    ds = task.build_dataset("train")
    assert len(ds) == 16 and len(ds.skipped) == 2
    assert task.describe()["skipped_images"] == 2


def _eval_steps(task: ClassifyTask):
    """(Resize size, Normalize mean) of the task's PIL eval transform."""
    tf = task.transform(train=False).transforms
    resize = next(t for t in tf if type(t).__name__ == "Resize")
    return resize.size, tuple(round(float(m), 4) for m in next(t for t in tf if hasattr(t, "mean")).mean)


@pytest.mark.parametrize("model", ["linglo_t", "test_resnet"])
def test_data_config_is_the_models_pretrained_cfg(model, tiny_folder):
    """mean, std, crop_pct, interpolation: the model's pretrained_cfg reaches the PIL transforms and the decoded
    cache (val decoded at img_size / crop_pct, batches normalised with the cfg's mean/std)."""
    import timm
    cfg = timm.models.get_pretrained_cfg(model)
    task = make_task(model=model, data=str(tiny_folder), data_cache="memory", aa="none")
    assert {k: task.data_config[k] for k in ("mean", "std", "crop_pct", "interpolation")} == \
        {"mean": cfg.mean, "std": cfg.std, "crop_pct": cfg.crop_pct, "interpolation": cfg.interpolation}
    assert _eval_steps(task) == (math.floor(32 / cfg.crop_pct), tuple(round(m, 4) for m in cfg.mean))
    task.build_dataset("train")
    torch.testing.assert_close(task.augment.mean.flatten() / 255, torch.tensor(cfg.mean))
    torch.testing.assert_close(task.augment.std.flatten() / 255, torch.tensor(cfg.std))


def test_data_config_flags_override_only_what_they_name():
    task = make_task(crop_pct=0.5, mean=[0.1, 0.2, 0.3])
    assert task.data_config["crop_pct"] == 0.5 and task.data_config["mean"] == (0.1, 0.2, 0.3)
    assert task.data_config["std"] == (0.229, 0.224, 0.225) and task.data_config["interpolation"] == "bicubic"
    assert _eval_steps(task) == (64, (0.1, 0.2, 0.3))
    with pytest.raises(LingloError, match="--std takes 3 values"):
        make_task(std=[0.5])


def test_mixup_needs_an_even_batch():
    with pytest.raises(LingloError, match="even"):
        make_task(batch_size=5)
    make_task(batch_size=5, mixup=0.0, cutmix=0.0)


def test_predict_gives_topk_and_marks_unreadable(tiny_folder):
    task = make_task(topk=5)
    task.meta = {"num_classes": 2, "class_names": ["ants", "bees"]}
    files = sorted((tiny_folder / "val" / "ants").glob("*.jpg"))[:3]
    bad = tiny_folder / "bad.jpg"
    bad.write_bytes(b"nope")
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2)).eval()
    with torch.no_grad():
        preds = task.predict(model, [*files, bad], torch.device("cpu"), None)
    assert [p["file"] for p in preds] == [str(f) for f in [*files, bad]]
    for p in preds[:3]:
        assert len(p["top"]) == 2 and {t["label"] for t in p["top"]} == {"ants", "bees"}
        assert sum(t["prob"] for t in p["top"]) == pytest.approx(1.0)
        assert p["top"][0]["prob"] >= p["top"][1]["prob"]
    assert "unreadable" in preds[3]["error"]


# ---- decoded-image cache and class names --------------------------------------------------------------------
def test_cached_val_batches_are_the_pil_pipelines(tiny_folder_session):
    """The val cache is timm's eval transform itself: the same normalised pixels as the PIL loader."""
    batches = []
    for cache in ("memory", "off"):
        task = make_task(data=str(tiny_folder_session), data_cache=cache, aa="none")
        ds = task.build_dataset("val")
        loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=task.workers())
        batches.append(task.to_batch(next(iter(loader)), torch.device("cpu"), train=False))
        assert task.workers() == (0 if cache == "memory" else task.cfg["workers"])
    torch.testing.assert_close(batches[0].inputs, batches[1].inputs, rtol=1e-5, atol=1e-5)
    assert torch.equal(batches[0].targets, batches[1].targets)


def test_cached_train_batches_are_augmented_on_the_device_and_keyed_by_their_images(tiny_folder_session):
    task = make_task(data=str(tiny_folder_session), data_cache="memory", aa="none", mixup=0.0, cutmix=0.0)
    ds = task.build_dataset("train")
    raw = torch.utils.data.default_collate([ds[i] for i in (0, 3, 5, 1)])
    assert raw[0].dtype == torch.uint8 and raw[0].shape == (4, 3, 40, 40)     # cached at 1.25 x 32
    a, b = (task.to_batch(raw, torch.device("cpu"), train=True) for _ in range(2))
    assert a.inputs.shape == (4, 3, 32, 32) and torch.equal(a.inputs, b.inputs)
    other = task.to_batch(torch.utils.data.default_collate([ds[i] for i in (0, 3, 5, 2)]), torch.device("cpu"), True)
    assert not torch.equal(a.inputs[0], other.inputs[0])
    assert task.describe()["decoded_cache"]["train"].startswith("memory")


@pytest.mark.parametrize("aa, expected", [("none", True), ("rand-m9-mstd0.5-inc1", False)])
def test_auto_cache_only_without_pil_augmentation(tiny_folder_session, aa, expected):
    task = make_task(data=str(tiny_folder_session), aa=aa)
    ds = task.build_dataset("train")
    assert (type(ds).__name__ == "DecodedImages") is expected


def test_memory_cache_with_randaugment_is_refused():
    with pytest.raises(LingloError, match="--aa none, or --data-cache off"):
        make_task(data_cache="memory")


def test_class_names_come_from_classes_txt(tiny_folder):
    (tiny_folder / "classes.txt").write_text("ants\tformica ants\n\nbees\tApis mellifera\n")
    task = make_task(data=str(tiny_folder))
    task.build_dataset("train")
    task.build_dataset("val")
    assert task.meta["class_names"] == ["formica ants", "Apis mellifera"]
    (tiny_folder / "classes.txt").write_text("ants\tants 2\n")            # a folder it does not list keeps its name
    task = make_task(data=str(tiny_folder))
    task.build_dataset("train")
    assert task.meta["class_names"] == ["ants 2", "bees"]


@pytest.mark.parametrize("text, message", [("ants\n", "line 1: expected 'folder<TAB>name'"),
                                           ("ants\tx\nbees\tx\n", "the same name")])
def test_bad_classes_txt_is_one_line(tiny_folder, text, message):
    (tiny_folder / "classes.txt").write_text(text)
    with pytest.raises(LingloError, match=message) as e:
        make_task(data=str(tiny_folder)).build_dataset("train")
    assert "classes.txt" in str(e.value) and "\n" not in str(e.value)
