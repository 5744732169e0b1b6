"""utils.read_head: a classifier's head.npz read without pickle, or a plain error for one missing, damaged or of
another model's width (a Hugging Face classifier's score is tested in test_hf_classifier.py)."""
import numpy as np
import pytest

from utils import HEAD_FILE, fit_head, read_head


def save_head(folder, w, labels, **more):
    np.savez(folder / HEAD_FILE, w=w, labels=labels, **more)


def test_read_head_gives_float32_w_and_the_classes_in_order(tmp_path):
    w = np.random.default_rng(0).standard_normal((8, 3))
    save_head(tmp_path, w, np.array(["b", "a", "c"]))
    got, classes = read_head(str(tmp_path))
    assert got.dtype == np.float32 and np.array_equal(got, w.astype(np.float32)) and classes == ["b", "a", "c"]
    assert fit_head(got, 8, str(tmp_path / HEAD_FILE)) is got
    with pytest.raises(ValueError, match=r"head.npz holds a head of shape \[8, 3\] for 3 classes, which does not "
                                         r"fit this model \(n_embd 64\)"):
        fit_head(got, 64, str(tmp_path / HEAD_FILE))


@pytest.mark.parametrize("make, message", [
    (lambda folder: None, "has no head.npz: it was not trained with `python train.py --task classify`"),
    (lambda folder: (folder / "head.npz").write_bytes(b"PK\x03\x04 cut short"), "head.npz is damaged"),
    (lambda folder: np.savez(folder / "head.npz", w=np.zeros((4, 2))), "head.npz is damaged"),
    (lambda folder: save_head(folder, np.zeros((4, 2)), np.array(["a", None], object)), "head.npz is damaged"),
    (lambda folder: save_head(folder, np.zeros((4, 2)), np.array(["a", "b", "c"])), "one label per class"),
    (lambda folder: save_head(folder, np.zeros((4, 2), np.int64), np.array(["a", "b"])), "one label per class"),
    (lambda folder: save_head(folder, np.full((4, 2), np.nan), np.array(["a", "b"])), "must be finite"),
    (lambda folder: save_head(folder, np.zeros((4, 2)), np.array(["a", "a"])), "each once"),
])
def test_a_missing_or_damaged_head_is_one_plain_error(tmp_path, make, message):
    make(tmp_path)
    with pytest.raises(ValueError) as error:
        read_head(str(tmp_path))
    assert message in str(error.value) and "\n" not in str(error.value)


