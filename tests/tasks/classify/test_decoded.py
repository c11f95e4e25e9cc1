"""Decoded-image cache and batched augmentation: crops drawn as torchvision draws them, the same draws for the same
batch, the identity when nothing is random, colour jitter as torchvision's, unreadable files left out."""
from __future__ import annotations

import math
import random

import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from linglo.tasks.classify.decoded import BatchAugment, DecodedImages, batch_key, rrc_boxes, train_side
from linglo.tasks.images import keyed_rng

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def normalized(images: torch.Tensor) -> torch.Tensor:
    return (images.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def test_crop_boxes_lie_inside_with_area_and_aspect_in_range():
    g = torch.Generator().manual_seed(0)
    boxes = rrc_boxes(2000, 60, 80, (0.2, 0.6), (0.5, 2.0), generator=g)
    x0, y0, x1, y1 = boxes.unbind(1)
    w, h = x1 - x0, y1 - y0
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= 80).all() and (y1 <= 60).all()
    assert (w == w.round()).all() and (x0 == x0.round()).all()         # whole pixels, as torchvision's
    area = w * h / (60 * 80)
    assert area.min() > 0.19 and area.max() < 0.61                     # rounding moves the area a little
    aspect = w / h
    assert aspect.min() > 0.45 and aspect.max() < 2.2
    assert x0.std() > 5 and y0.std() > 5                               # positions vary


def test_crop_boxes_fall_back_to_the_centre_when_nothing_fits():
    boxes = rrc_boxes(5, 40, 100, (2.0, 3.0), (3 / 4, 4 / 3))          # area > image: no draw fits
    assert boxes.tolist() == [[(100 - 53) // 2, 0, (100 - 53) // 2 + 53, 40]] * 5   # aspect clamped to 4/3


def test_augment_under_a_key_is_a_function_of_the_key_and_leaves_the_global_streams_alone():
    images = torch.randint(0, 256, (6, 3, 40, 40), dtype=torch.uint8)
    aug = BatchAugment(32, (0.3, 1.0), MEAN, STD, color_jitter=0.4, re_prob=0.5)
    torch.manual_seed(0)
    random.seed(0)
    expected = (torch.rand(3), random.random())
    torch.manual_seed(0)
    random.seed(0)
    out = {}
    for key in (7, 7, 8):
        with keyed_rng(key, images.device):
            out.setdefault(key, []).append(aug(images))
    assert out[7][0].shape == (6, 3, 32, 32) and out[7][0].dtype == torch.float32
    assert torch.equal(*out[7]) and not torch.equal(out[7][0], out[8][0])
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1]
    idx = torch.tensor([3, 1, 4])
    assert batch_key(42, idx) == batch_key(42, idx.clone()) != batch_key(43, idx)


@pytest.mark.parametrize("hflip", [0.0, 1.0])
def test_full_crop_without_randomness_is_the_normalised_image(hflip):
    images = torch.randint(0, 256, (3, 3, 24, 24), dtype=torch.uint8)
    aug = BatchAugment(24, (1.0, 1.0), MEAN, STD, hflip=hflip)
    out = aug(images)
    expected = normalized(images.flip(-1) if hflip else images)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(aug.normalize(images), normalized(images), rtol=1e-5, atol=1e-5)


def test_color_jitter_is_torchvisions_where_nothing_saturates():
    torch.manual_seed(0)
    x = 100 + 50 * torch.rand(4, 3, 16, 16)                            # mid-range values, 0..255 scale
    f = torch.tensor([1.1, 0.9, 1.2, 0.95]).view(1, 4, 1, 1, 1).expand(3, 4, 1, 1, 1).clone()
    f[1] = torch.tensor([0.8, 1.2, 1.0, 1.1]).view(4, 1, 1, 1)
    f[2] = torch.tensor([1.3, 0.7, 0.9, 1.0]).view(4, 1, 1, 1)
    ours = BatchAugment._color_jitter(x.clone(), f)
    for i in range(4):
        ref = x[i] / 255
        ref = TF.adjust_brightness(ref, float(f[0, i]))
        ref = TF.adjust_contrast(ref, float(f[1, i]))
        ref = TF.adjust_saturation(ref, float(f[2, i]))
        torch.testing.assert_close(ours[i] / 255, ref, rtol=1e-4, atol=1e-4)


def test_decoded_images_skip_unreadable_files_without_substitutes(tmp_path):
    paths = []
    for i in range(3):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (30, 20), (10 * i, 0, 0)).save(p)
        paths.append(str(p))
    (tmp_path / "1.png").write_bytes((tmp_path / "1.png").read_bytes()[:40])   # header only: decoding fails
    ds = DecodedImages([(p, i) for i, p in enumerate(paths)], lambda im: TF.pil_to_tensor(im.resize((8, 8))), 8,
                       load=lambda p: Image.open(p).convert("RGB"), log=lambda *_: None)
    assert len(ds) == 2 and ds.skipped == [paths[1]]
    image, label, index = ds[1]
    assert image.dtype == torch.uint8 and image.shape == (3, 8, 8) and (label, index) == (2, 1)
    assert int(image[0, 0, 0]) == 20                                   # the third file's red, not the second's


def test_train_cache_side_leaves_room_to_crop():
    assert train_side(128) == 160 and train_side(224) == math.ceil(1.25 * 224)
