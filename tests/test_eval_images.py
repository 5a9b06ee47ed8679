"""ddpm_eval.images: reading shards and sample folders, and the errors for bad sample folders."""
import numpy as np
import pytest
from eval_helpers import CLASSES, fresh_real, shared_shards, write_samples
from PIL import Image

from ddpm_eval.images import EvalInputError, blurred, center_crop, load_real, load_samples, require_counts


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    return load_real(shared_shards(tmp_path_factory))


def test_real_splits_are_centre_cropped_to_the_training_size(real):
    assert real.classes == CLASSES and real.size == 32 and real.channels == 3
    assert real.train.images.shape[1:] == (3, 32, 32) and real.train.images.dtype == np.uint8
    assert len(real.train.names) == len(real.train) and len(real.val) > 0
    assert len(real.manifest_sha256) == 64


def test_center_crop_takes_the_middle():
    images = np.arange(36, dtype=np.uint8).reshape(1, 1, 6, 6)
    assert center_crop(images, 4)[0, 0, 0].tolist() == [7, 8, 9, 10]


def test_samples_round_trip_with_labels(tmp_path, real):
    images, labels = fresh_real(counts=(2, 3))
    write_samples(tmp_path, images, labels)
    (tmp_path / ".hidden").mkdir()  # hidden folders and files are ignored
    (tmp_path / "normal" / ".DS_Store").write_text("x")
    _write(tmp_path / "normal-grid.png", (300, 100))  # ddpm-sample's contact sheet beside the class folders
    samples = load_samples(tmp_path, real.classes, 32, 3)
    assert np.array_equal(samples.images, images) and samples.labels.tolist() == labels.tolist()
    assert samples.names[0] == "abnormal/00000.png"
    only = load_samples(tmp_path, real.classes, 32, 3, only="normal")
    assert set(only.labels.tolist()) == {CLASSES.index("normal")}


def _write(path, size=(32, 32)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, "gray").save(path)


@pytest.mark.parametrize(
    "arrange, flags, message",
    [
        (lambda root: None, {}, "no such folder"),
        (lambda root: root.mkdir(), {}, "empty; expected class subfolders"),
        (lambda root: _write(root / "x.png"), {}, "images directly in the folder"),
        (lambda root: _write(root / "tumour" / "a.png"), {}, "tumour unknown to the shards (classes: abnormal, normal)"),
        (lambda root: _write(root / "normal" / "a.png", (64, 64)), {}, "64x64 px, expected 32x32"),
        (lambda root: _write(root / "normal" / "a.png", (64, 64)), {}, "trained at 32 px (ddpm-train --img-size 32)"),
        (lambda root: (root / "normal").mkdir(parents=True), {}, "normal: no images"),
        (lambda root: (root / "normal").mkdir(parents=True) or (root / "normal" / "a.png").write_text("no"), {}, "not a readable image"),
        (lambda root: _write(root / "normal" / "a.png"), {"only": "cats"}, "--class cats: not a class"),
        (lambda root: _write(root / "normal" / "a.png"), {"only": "abnormal"}, "abnormal does not exist"),
    ],
)
def test_bad_sample_folders_say_what_is_expected(tmp_path, real, arrange, flags, message):
    root = tmp_path / "samples"
    arrange(root)
    with pytest.raises(EvalInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_samples(root, real.classes, 32, 3, **flags)


def test_too_few_images_are_refused(tmp_path, real):
    images, labels = fresh_real(counts=(1, 3))
    samples = load_samples(write_samples(tmp_path, images, labels), real.classes, 32, 3)
    require_counts(samples, real, [CLASSES.index("normal")], tmp_path)
    with pytest.raises(EvalInputError, match="1 samples of class 'abnormal', need at least 2"):
        require_counts(samples, real, [0, 1], tmp_path)


def test_blurred_keeps_shape_and_lowers_contrast(real):
    soft = blurred(real.val, sigma=1.0)
    assert soft.images.shape == real.val.images.shape and soft.images.dtype == np.uint8
    assert soft.images.astype(float).std() < real.val.images.astype(float).std()


def test_a_damaged_hdf5_file_names_the_file_and_the_fix(tmp_path, real):
    import shutil

    copy = tmp_path / "shards"
    shutil.copytree(real.root, copy)
    (copy / "data.h5").write_bytes(b"not hdf5")
    with pytest.raises(EvalInputError, match="data.h5: unreadable HDF5.*ddpm-data build --size 32"):
        load_real(copy)


def test_only_the_splits_asked_for_are_read(real):
    header = load_real(real.root, splits=())
    assert (len(header.train), len(header.val)) == (0, 0) and header.manifest_sha256 == real.manifest_sha256
    assert header.train.images.shape[1:] == real.train.images.shape[1:]
    train_only = load_real(real.root, splits=("train",))
    assert np.array_equal(train_only.train.images, real.train.images) and len(train_only.val) == 0
