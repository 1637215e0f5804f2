"""Validation splits: image-level (classification) and class-level (retrieval) disjointness, seeded
reproducibility, sizes; DDP shards of the remaining training split are still exact; a training split
smaller than one batch is refused with both numbers."""

import numpy as np
import pytest

from recogfast.data import ImageList, ShuffleBatchSampler, split_by_class, split_by_image
from recogfast.engine.build import RunConfig, check_train_split, small_classes_note


def _images(classes=196, per_class=30):
    files = [f"/d/c{c:03d}/{i:02d}.jpg" for c in range(classes) for i in range(per_class)]
    labels = [c for c in range(classes) for _ in range(per_class)]
    return ImageList(files, labels, [f"c{c:03d}" for c in range(classes)])


def test_image_split_is_stratified_disjoint_and_seeded():
    ds = _images()  # Shapes196's classification train split: 30 images a class
    train, val = split_by_image(ds, 0.1, seed=0)
    assert len(val) == 196 * 3 and len(train) == 196 * 27  # 3 a class, as the "3 on Shapes196"
    assert np.bincount(val.labels).tolist() == [3] * 196 and np.bincount(train.labels).tolist() == [27] * 196
    assert not set(train.files) & set(val.files) and sorted(train.files + val.files) == sorted(ds.files)
    for part in (train, val):  # labels unchanged: a file keeps its class
        assert all(ds.labels[ds.files.index(f)] == y for f, y in zip(part.files[::97], part.labels[::97]))
    assert train.num_classes == val.num_classes == 196 and val.split == "val"
    again, other = split_by_image(ds, 0.1, seed=0)[1], split_by_image(ds, 0.1, seed=1)[1]
    assert again.files == val.files and other.files != val.files
    # Tiny ImageNet's 500 a class: 50 a class
    assert len(split_by_image(_images(4, 500), 0.1)[1]) == 4 * 50


def test_class_split_is_class_disjoint_and_seeded():
    ds = _images(98, 5)  # a retrieval train split: 98 classes (Cars196 1-98, or Shapes196's)
    train, val = split_by_class(ds, 0.15, seed=0)
    assert val.num_classes == 15 and train.num_classes == 83  # 15 of Cars196's 98
    assert not set(train.classes) & set(val.classes) and sorted(train.classes + val.classes) == ds.classes
    assert sorted(set(val.labels)) == list(range(15)) and sorted(set(train.labels)) == list(range(83))
    assert len(val) == 15 * 5 and len(train) == 83 * 5
    for part in (train, val):  # each image's class name is still its own
        assert all(part.classes[y] == f.split("/")[2] for f, y in zip(part.files, part.labels))
    assert split_by_class(ds, 0.15, seed=0)[1].classes == val.classes
    assert split_by_class(ds, 0.15, seed=3)[1].classes != val.classes
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        split_by_class(ds, 0.0)


def test_ddp_shards_of_the_split_are_exact():
    train, _ = split_by_image(_images(10, 10), 0.1)
    shards = [list(ShuffleBatchSampler(len(train), 4, shuffle=True, drop_last=True, seed=0, shard_id=r, num_shards=2))
              for r in range(2)]
    flat = [[i for b in s for i in b] for s in shards]
    assert len(flat[0]) == len(flat[1]) == 44 and not set(flat[0]) & set(flat[1])


def test_a_split_smaller_than_one_batch_is_refused_with_both_numbers():
    ds = _images(10, 10)
    train, val = split_by_image(ds, 0.1)
    cfg = RunConfig(task="classify", batch_size=128, val_fraction=0.1).resolved()
    with pytest.raises(ValueError, match=r"has 90 images after holding out 10 images .* --batch-size 128: lower --batch-size to 90"):
        check_train_split(cfg, train, val)
    cfg.batch_size = 64
    check_train_split(cfg, train, val)  # 90 >= 64
    with pytest.raises(ValueError, match=r"90 images \(45 per rank over 2 ranks\).*--batch-size 64"):
        check_train_split(cfg, train, val, world=2)
    rcfg = RunConfig(task="retrieval", batch_size=64, m_per_class=4).resolved()
    rtrain, rval = split_by_class(_images(20, 8), 0.15)
    check_train_split(rcfg, rtrain, rval)  # 17 classes >= 16 a batch
    rcfg.batch_size = 128
    with pytest.raises(ValueError, match=r"has 17 classes after holding out 3 classes .* fewer than the 32 distinct"):
        check_train_split(rcfg, rtrain, rval)


def test_small_classes_are_reported_once_with_the_count():
    assert small_classes_note([0] * 5 + [1] * 2 + [2] * 3, 4) == (
        "note: 2 of 3 training classes have fewer than --m-per-class 4 images (smallest: 2); "
        "their groups of 4 are filled by drawing with replacement")
    assert small_classes_note([0] * 4 + [1] * 4, 4) is None


def test_val_fraction_zero_refuses_patience_and_plateau():
    with pytest.raises(ValueError, match="--patience needs a validation split"):
        RunConfig(val_fraction=0.0, patience=3).resolved()
    with pytest.raises(ValueError, match="--schedule plateau needs a validation split"):
        RunConfig(val_fraction=0.0, schedule="plateau").resolved()
    assert RunConfig(task="retrieval").resolved().val_fraction == 0.15
    assert RunConfig(task="classify").resolved().val_fraction == 0.1


def test_a_val_split_much_larger_than_asked_is_said_with_the_numbers():
    from recogfast.engine.build import val_split_note

    cfg = RunConfig(task="classify", val_fraction=0.1)
    ds = _images(10, 3)  # 3 images a class: one of each goes to val, a third instead of a tenth
    note = val_split_note(cfg, *split_by_image(ds, 0.1))
    assert note is not None and "held out 10 of 30 training images (33%)" in note and "3.0 a class" in note
    assert val_split_note(cfg, *split_by_image(_images(10, 30), 0.1)) is None  # 3 of 30: as asked
    assert val_split_note(cfg, split_by_image(ds, 0.1)[0], None) is None
    retrieval = RunConfig(task="retrieval", val_fraction=0.15)
    note = val_split_note(retrieval, *split_by_class(_images(6, 5), 0.15))  # 2 of 6 classes at least
    assert note is not None and "held out 2 of 6 training classes" in note
