"""Checkpoints: atomic writes survive a crash mid-write, clear errors, exact RNG restore."""
from __future__ import annotations

import errno
import random

import numpy as np
import pytest
import torch

from linglo.engine import checkpoint as ck
from linglo.errors import LingloError


def state(value: float) -> dict:
    return {"model": {"w": torch.full((4,), value)}, "config": {"model": "m"}, "meta": {"task": "classify"}}


def test_crash_mid_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ck.save_checkpoint(path, state(1.0))
    real_save = torch.save

    def disk_full(obj, f):
        real_save(obj, f)               # some bytes reach the temporary file ...
        raise OSError(errno.ENOSPC, "No space left on device")  # ... then the disk is full

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(LingloError, match="No space left on device.*previous checkpoint is kept"):
        ck.save_checkpoint(path, state(2.0))
    monkeypatch.undo()
    assert torch.equal(ck.load_checkpoint(path)["model"]["w"], torch.full((4,), 1.0))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]   # no temporary file left behind


def test_unreadable_or_foreign_checkpoints(tmp_path):
    with pytest.raises(LingloError, match="does not exist"):
        ck.load_checkpoint(tmp_path / "none.pt")
    truncated = tmp_path / "truncated.pt"
    ck.save_checkpoint(truncated, state(1.0))
    truncated.write_bytes(truncated.read_bytes()[:100])
    with pytest.raises(LingloError, match="cannot read checkpoint"):
        ck.load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(LingloError, match="not a linglo checkpoint"):
        ck.load_checkpoint(foreign)


def test_compatibility_names_both_sides():
    ckpt = {"meta": {"task": "classify", "model": "linglo_t", "num_classes": 2, "class_names": ["a", "b"]}}
    ck.check_compatible(ckpt, "x.pt", dict(ckpt["meta"]))
    with pytest.raises(LingloError, match=r"for task 'classify', model 'linglo_t' with 2 classes \(a, b\), "
                                          r"but this run is for task 'classify', model 'resnet18'"):
        ck.check_compatible(ckpt, "x.pt", {**ckpt["meta"], "model": "resnet18"})
    with pytest.raises(LingloError, match="with 3 classes"):
        ck.check_compatible(ckpt, "x.pt", {**ckpt["meta"], "num_classes": 3, "class_names": ["a", "b", "c"]})


def test_rng_round_trip_through_a_checkpoint(tmp_path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    ck.save_checkpoint(tmp_path / "c.pt", {**state(0.0), "rng": ck.capture_rng()})
    expected = (random.random(), np.random.rand(), torch.rand(3), np.random.randn())
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    ck.restore_rng(ck.load_checkpoint(tmp_path / "c.pt")["rng"])
    got = (random.random(), np.random.rand(), torch.rand(3), np.random.randn())
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])
    assert got[3] == expected[3]
