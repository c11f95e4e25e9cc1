"""Shared test data: a tiny real ImageFolder (hymenoptera photos resized to 40 px)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

# shared/ sits beside the project checkout (developers and CI alike)
HYMENOPTERA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hymenoptera"


def make_image_folder(root: Path, per_class: dict[str, int], size: int = 40) -> Path:
    """root/{train,val}/{ants,bees}/*.jpg from the first real images of each class."""
    if not HYMENOPTERA.is_dir():
        pytest.skip(f"{HYMENOPTERA} not available")
    for split, n in per_class.items():
        for cls in ("ants", "bees"):
            out = root / split / cls
            out.mkdir(parents=True)
            for src in sorted((HYMENOPTERA / split / cls).glob("*.jpg"))[:n]:
                with Image.open(src) as im:
                    im.convert("RGB").resize((size, size), Image.BICUBIC).save(out / src.name, quality=90)
    return root


@pytest.fixture(scope="session")
def tiny_folder_session(tmp_path_factory) -> Path:
    """Read-only tiny dataset: 8 train + 4 val images per class (ants, bees), 40×40."""
    return make_image_folder(tmp_path_factory.mktemp("tiny") / "data", {"train": 8, "val": 4})


@pytest.fixture
def tiny_folder(tiny_folder_session, tmp_path) -> Path:
    """A private copy of the tiny dataset that a test may modify."""
    return Path(shutil.copytree(tiny_folder_session, tmp_path / "data"))
