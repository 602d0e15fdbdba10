"""Data: list files and folder trees, their errors, the recipe's transforms, corrupt images, sampling."""

from __future__ import annotations

import numpy as np
import pytest
from finetune_trainer.data import (
    CORRUPT_LABEL,
    MEAN,
    STD,
    CorruptImageCounter,
    DataError,
    EpochBatchSampler,
    ImageDataset,
    eval_transform,
    index_dataset,
    read_list_file,
    train_transform,
)
from PIL import Image

from tests.trainer.tiny_data import write_folder_dataset, write_image, write_list_dataset


@pytest.fixture
def root(tmp_path):
    write_image(tmp_path / "a.png", (10, 20, 30))
    write_image(tmp_path / "sub dir" / "b c.png", (10, 20, 30))
    return tmp_path


def _list(root, text):
    path = root / "list.txt"
    path.write_text(text)
    return path


def test_list_file_skips_blank_and_comment_lines_and_allows_spaces_in_paths(root):
    samples = read_list_file(_list(root, "# header\n\na.png 0\nsub dir/b c.png 2\n"), root, 3)
    assert [(s.path.name, s.label) for s in samples] == [("a.png", 0), ("b c.png", 2)]
    assert samples[1].origin.endswith("list.txt:4")


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("a.png 0\njustonefield\n", 2, "malformed line"),
        ("a.png 0\na.png zero\n", 2, "not an integer"),
        ("a.png 3\n", 1, "label 3 out of range: must be 0..2"),
        ("a.png 0\n\na.png -1\n", 3, "label -1 out of range"),
        ("a.png 0\nmissing.png 1\n", 2, "image 'missing.png' not found"),
        ("../outside.png 0\n", 1, "escapes the dataset root"),
        ("a.png 1\n/etc/hostname 0\n", 2, "escapes the dataset root"),
        ("sub dir/../../a.png 0\n", 1, "escapes the dataset root"),
    ],
)
def test_list_file_errors_name_file_and_line(root, text, line, words):
    path = _list(root, text)
    with pytest.raises(DataError) as err:
        read_list_file(path, root, num_classes=3)
    assert f"{path}:{line}:" in str(err.value)
    assert words in str(err.value)


def test_missing_and_empty_list_files(root):
    with pytest.raises(DataError, match="list file not found"):
        read_list_file(root / "nope.txt", root)
    with pytest.raises(DataError, match="no samples"):
        read_list_file(_list(root, "# only a comment\n"), root)


def test_list_dataset_infers_the_class_count(tmp_path):
    write_list_dataset(tmp_path, classes=3)
    index = index_dataset(tmp_path, "list")
    assert index.num_classes == 3
    assert (len(index.train), len(index.val)) == (12, 6)
    assert index.label_names == ["0", "1", "2"]
    with pytest.raises(DataError, match="val_list.txt:1: label 2 out of range"):
        # numClasses smaller than the labels: the first out-of-range line is named
        (tmp_path / "val_list.txt").write_text("images/val_c2_0.png 2\n")
        index_dataset(tmp_path, "list", num_classes=2, trainList="val_list.txt", valList="val_list.txt")


def test_folder_dataset(tmp_path):
    write_folder_dataset(tmp_path, names=("dog", "cat"), per_class=2)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    index = index_dataset(tmp_path, "folder")
    assert index.label_names == ["cat", "dog"]  # sorted folder names give the labels
    assert sorted({(s.path.parent.name, s.label) for s in index.train}) == [("cat", 0), ("dog", 1)]
    assert len(index.train) == 4 and len(index.val) == 4
    with pytest.raises(DataError, match="2 class folders but dataset.numClasses=5"):
        index_dataset(tmp_path, "folder", num_classes=5)
    write_image(tmp_path / "val" / "bird" / "0.jpg", (1, 2, 3))
    with pytest.raises(DataError, match="bird: class folder not among the training classes"):
        index_dataset(tmp_path, "folder")


def test_missing_folders(tmp_path):
    with pytest.raises(DataError, match="dataset root not found"):
        index_dataset(tmp_path / "nothing", "folder")
    with pytest.raises(DataError, match="image folder not found"):
        index_dataset(tmp_path, "folder")


def test_train_transform_shape_normalisation_and_determinism():
    image = Image.new("RGB", (40, 30), (255, 128, 0))
    out = train_transform(image, 24, np.random.default_rng(0))
    assert out.shape == (3, 24, 24) and out.dtype == np.float32
    # A flat image stays flat through any crop: every pixel is the normalised colour.
    expected = (np.array([255, 128, 0]) / 255.0 - MEAN) / STD
    np.testing.assert_allclose(out.mean(axis=(1, 2)), expected, rtol=1e-5)
    np.testing.assert_allclose(out.std(axis=(1, 2)), 0, atol=1e-5)


def test_eval_transform_resizes_the_short_side_then_centre_crops():
    # Left half black, right half white, 60x30: short side 30 -> 20 gives 40x20, crop 20x20 centred.
    pixels = np.zeros((30, 60, 3), dtype=np.uint8)
    pixels[:, 30:] = 255
    out = eval_transform(Image.fromarray(pixels), 20, 20)
    assert out.shape == (3, 20, 20)
    white = (1.0 - MEAN) / STD
    black = (0.0 - MEAN) / STD
    np.testing.assert_allclose(out[:, :, 0], np.broadcast_to(black[:, None], (3, 20)), atol=1e-5)
    np.testing.assert_allclose(out[:, :, -1], np.broadcast_to(white[:, None], (3, 20)), atol=1e-5)


def test_dataset_augmentation_depends_on_seed_epoch_and_index(tmp_path):
    write_list_dataset(tmp_path, classes=2)
    index = index_dataset(tmp_path, "list")
    ds = ImageDataset(index.train, 16, 16, train=True, seed=1)
    first, label, i = ds[3]
    assert (int(label), int(i)) == (index.train[3].label, 3)
    np.testing.assert_array_equal(first, ds[3][0])  # same epoch: same crop, in any worker
    ds.set_epoch(1)
    assert not np.array_equal(first, ds[3][0])
    ds.set_epoch(0)
    np.testing.assert_array_equal(first, ds[3][0])


def test_corrupt_images_come_back_marked_and_the_policy_decides(tmp_path):
    write_list_dataset(tmp_path, classes=2, train_per_class=2)
    bad = tmp_path / "images" / "train_c0_0.png"
    bad.write_bytes(b"\x89PNG but not really")
    index = index_dataset(tmp_path, "list")
    ds = ImageDataset(index.train, 16, 16, train=True)
    image, label, i = ds[0]
    assert int(label) == CORRUPT_LABEL and image.shape == (3, 16, 16)

    with pytest.raises(DataError, match=r"train_c0_0.png: image cannot be decoded .*train_list.txt:1"):
        CorruptImageCounter("fail", 10).record([index.train[0]])

    skip = CorruptImageCounter("skip", 1)
    skip.record([index.train[0]])
    skip.record([index.train[0]])  # the same file in a later epoch counts once
    assert skip.count == 1
    with pytest.raises(DataError, match="2 corrupt images exceed dataset.maxCorruptImages=1"):
        skip.record([index.train[1]])


def test_epoch_batch_sampler_shuffles_by_seed_and_epoch_and_resumes_mid_epoch(tmp_path):
    data = list(range(10))
    a = EpochBatchSampler(data, 3, rank=0, world_size=1, shuffle=True, seed=7)
    a.set_epoch(2)
    full = list(a)
    assert sorted(i for b in full for i in b) == data and len(full) == 4 == a.steps_per_epoch()
    a.set_epoch(2)
    assert list(a) == full  # deterministic
    a.set_epoch(3)
    assert list(a) != full
    a.set_epoch(2, start_step=3)
    assert list(a) == full[3:] and len(a) == 1
    b = EpochBatchSampler(data, 3, rank=0, world_size=1, shuffle=True, seed=8)
    b.set_epoch(2)
    assert list(b) != full
    big = EpochBatchSampler(data, 3, rank=0, world_size=1, shuffle=True, seed=2**31 + 5)
    big.set_epoch(10**6)  # any seed and epoch stay valid RandomState seeds
    assert sorted(i for batch in big for i in batch) == data


def test_epoch_batch_sampler_shards_across_ranks():
    data = list(range(10))
    shards = []
    for rank in range(2):
        sampler = EpochBatchSampler(data, 2, rank=rank, world_size=2, shuffle=True, seed=0)
        sampler.set_epoch(0)
        shards.append([i for batch in sampler for i in batch])
    assert set(shards[0]).isdisjoint(shards[1])
    assert sorted(shards[0] + shards[1]) == data


def test_crop_scale_and_flip_settings():
    pixels = np.zeros((20, 20, 3), dtype=np.uint8)
    pixels[:, 10:] = 255  # dark left half, bright right half
    image = Image.fromarray(pixels)

    def mirrored(seed, **kw):
        out = train_transform(image, 16, np.random.default_rng(seed), **kw)
        return out[:, :, 0].mean() > out[:, :, -1].mean()

    assert not any(mirrored(s, scale_min=1.0, flip=False) for s in range(30))
    assert any(mirrored(s, scale_min=1.0, flip=True) for s in range(30))
    # scale_min 1: the crop always spans the whole width or height, so both halves stay visible
    for s in range(30):
        out = train_transform(image, 16, np.random.default_rng(s), scale_min=1.0, flip=False)
        assert out[:, :, 0].mean() < out[:, :, -1].mean()


def test_label_list_names_the_classes(tmp_path):
    write_list_dataset(tmp_path, classes=3)
    (tmp_path / "names.txt").write_text("0 pink primrose\n1 hard-leaved pocket orchid\n2 canterbury bells\n")
    index = index_dataset(tmp_path, "list", labelList="names.txt")
    assert index.label_names == ["pink primrose", "hard-leaved pocket orchid", "canterbury bells"]
    assert index.num_classes == 3
    (tmp_path / "plain.txt").write_text("cat\ndog\nbird\n")
    assert index_dataset(tmp_path, "list", labelList="plain.txt").label_names == ["cat", "dog", "bird"]
    with pytest.raises(DataError, match="2 class names but dataset.numClasses=3"):
        (tmp_path / "two.txt").write_text("cat\ndog\n")
        index_dataset(tmp_path, "list", num_classes=3, labelList="two.txt")
    with pytest.raises(DataError, match=r"train_list.txt:\d+: label 2 out of range"):
        index_dataset(tmp_path, "list", labelList="two.txt")  # labels 0..2 but only 2 names
    (tmp_path / "gap.txt").write_text("0 a\n2 c\n")
    with pytest.raises(DataError, match=r"gap.txt:2: class id 2 out of order: expected 1"):
        index_dataset(tmp_path, "list", labelList="gap.txt")
    with pytest.raises(DataError, match="label list not found"):
        index_dataset(tmp_path, "list", labelList="missing.txt")


# ------------------------------------------------------------------------------------------------
# The fast training path (train_sample): the same crops as the reference draw, read from the file
# ------------------------------------------------------------------------------------------------
def _photo(path, width, height, seed=0, **save):
    """A smooth JPEG (or PNG) with structure at every scale, so a wrong crop shows."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(height // 24 + 2, width // 24 + 2, 3), dtype=np.uint8)
    pixels = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC))
    Image.fromarray(pixels).save(path, **save)
    return path


def test_train_sample_equals_the_transform_of_the_decoded_image(tmp_path):
    """Lossless files: reading the file (train_sample) and transforming the decoded image
    (train_transform) draw the same crop and flip and give the same pixels."""
    from finetune_trainer.data import train_sample

    path = _photo(tmp_path / "a.png", 120, 90)
    for seed in range(20):
        expected = train_transform(Image.open(path), 32, np.random.default_rng(seed))
        np.testing.assert_array_equal(train_sample(path, 32, np.random.default_rng(seed)), expected)


def test_a_jpeg_decoded_at_reduced_size_gives_the_same_crop(tmp_path):
    """When the crop is at least twice the output, the JPEG is decoded at 1/2, 1/4 or 1/8 (the
    DCT does the averaging): the output is the same region as an area-averaged resize of the
    fully decoded crop, within a few grey levels; a crop moved by an eighth of its width is not."""
    import cv2
    from finetune_trainer import data

    path = _photo(tmp_path / "big.jpg", 1000, 800, quality=95)
    full = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)

    def reference(x, y, w, h):
        area = cv2.resize(full[y : y + h, x : x + w], (64, 64), interpolation=cv2.INTER_AREA)
        return data.normalize(area, bgr=True)

    same, moved, factors = [], [], set()
    for seed in range(40):
        x, y, w, h = data.crop_box(1000, 800, np.random.default_rng(seed))
        factors.add(data.reduction_for(w, h, 64))
        out = data.train_sample(path, 64, np.random.default_rng(seed), flip=False)
        same.append(np.abs(out - reference(x, y, w, h)).mean())
        if x + w + w // 8 <= 1000:
            moved.append(np.abs(out - reference(x + w // 8, y, w, h)).mean())
    assert factors >= {2, 4, 8}
    grey = 1 / 255 / 0.226  # one grey level in normalised units
    assert np.mean(same) < 3 * grey < 3 * grey * 3 < np.mean(moved)


def test_jpeg_size_reads_the_frame_header(tmp_path):
    from finetune_trainer.data import jpeg_size

    for i, (w, h, extra) in enumerate(
        [(37, 23, {}), (640, 480, {"progressive": True}), (5, 900, {"quality": 30})]
    ):
        path = _photo(tmp_path / f"{i}.jpg", w, h, **extra)
        assert jpeg_size(path.read_bytes()) == (w, h)
    assert jpeg_size(_photo(tmp_path / "x.png", 10, 10).read_bytes()) is None
    assert jpeg_size(b"\xff\xd8\xff") is None


def test_a_truncated_jpeg_is_a_corrupt_sample(tmp_path):
    write_list_dataset(tmp_path, classes=1, train_per_class=1)
    index = index_dataset(tmp_path, "list")
    path = index.train[0].path
    whole = _photo(tmp_path / "whole.jpg", 200, 150).read_bytes()
    path.write_bytes(whole[: len(whole) // 2])  # OpenCV would decode this with grey rows; PIL refuses
    image, label, _ = ImageDataset(index.train, 16, 16, train=True)[0]
    assert int(label) == CORRUPT_LABEL
    path.write_bytes(whole)
    image, label, _ = ImageDataset(index.train, 16, 16, train=True)[0]
    assert int(label) == 0 and image.shape == (3, 16, 16)
