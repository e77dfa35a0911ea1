import numpy as np
import pytest

from idfer_jax.data import pipeline


def test_open_dataset_holds_out_whole_subjects(smoke_config):
    ds = pipeline.open_dataset(smoke_config.data)
    train_subjects = set(ds.labels["subject"][ds.train_indices])
    test_subjects = set(ds.labels["subject"][ds.test_indices])
    assert train_subjects and test_subjects and not train_subjects & test_subjects
    assert ds.spec.train_subjects == tuple(sorted(train_subjects))
    assert ds.spec.num_classes == 7 and ds.spec.image_shape == (48, 48, 3)
    assert set(ds.spec.pose_keys) == {"yaw", "pitch", "roll"}
    assert sorted(s for f in ds.fold_file["test_subjects"] for s in f) == sorted(
        set(ds.labels["subject"].tolist())
    )


def test_train_loader_batches_and_state_resume(smoke_config):
    ds = pipeline.open_dataset(smoke_config.data)
    loader = pipeline.train_loader(ds, smoke_config.data, global_batch_size=8, seed=1)
    it = iter(loader)
    first = next(it)
    assert first["image"].shape == (8, 48, 48, 3) and first["image"].dtype == np.float32
    assert -1.0 <= first["image"].min() and first["image"].max() <= 1.0
    assert first["expression"].dtype == np.int32
    assert set(first["subject"].tolist()) <= set(ds.spec.train_subjects)
    state = it.get_state()
    expected = next(it)
    resumed = iter(pipeline.train_loader(ds, smoke_config.data, global_batch_size=8, seed=1))
    resumed.set_state(state)
    got = next(resumed)
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k])


def test_flip_mirrors_image_and_negates_yaw_and_roll():
    image = np.random.default_rng(0).uniform(-1, 1, (16, 16, 3)).astype(np.float32)
    example = {"image": image, "neutral_image": image + 0.5, "yaw": np.float32(30.0),
               "roll": np.float32(-10.0), "pitch": np.float32(5.0)}
    augment = pipeline.Augment(crop_padding=0, flip=True)
    flipped = unflipped = None
    for seed in range(20):
        out = augment.random_map(example, np.random.default_rng(seed))
        if out["yaw"] < 0:
            flipped = out
        else:
            unflipped = out
    assert flipped is not None and unflipped is not None
    np.testing.assert_array_equal(flipped["image"], image[:, ::-1])
    np.testing.assert_array_equal(flipped["neutral_image"], (image + 0.5)[:, ::-1])
    assert flipped["yaw"] == -30.0 and flipped["roll"] == 10.0 and flipped["pitch"] == 5.0
    np.testing.assert_array_equal(unflipped["image"], image)


def test_crop_moves_every_image_key_alike():
    image = np.random.default_rng(0).uniform(-1, 1, (16, 16, 3)).astype(np.float32)
    out = pipeline.Augment(crop_padding=3, flip=False).random_map(
        {"image": image, "neutral_image": image.copy()}, np.random.default_rng(5)
    )
    assert out["image"].shape == image.shape
    np.testing.assert_array_equal(out["image"], out["neutral_image"])


AUGMENTATIONS = {"resized_crop_scale": 0.7, "rotation": 15.0, "brightness": 0.3, "contrast": 0.3,
                 "saturation": 0.5, "grey": 1.0, "erasing": 1.0}


@pytest.mark.parametrize("key", sorted(AUGMENTATIONS))
def test_each_augmentation_switch_changes_images_alike_and_keeps_them_valid(key):
    rng = np.random.default_rng(0)
    image = np.clip(rng.normal(0, 0.4, (24, 24, 3)), -1, 1).astype(np.float32)
    example = {"image": image, "neutral_image": image.copy(), "yaw": np.float32(10.0)}
    off = pipeline.Augment(0, False).random_map(example, np.random.default_rng(3))
    np.testing.assert_array_equal(off["image"], image)  # every switch off: the image is untouched
    on = pipeline.Augment(0, False, {key: AUGMENTATIONS[key]})
    outs = [on.random_map(example, np.random.default_rng(seed)) for seed in range(4)]
    for out in outs:
        assert out["image"].shape == image.shape and out["image"].dtype == np.float32
        assert out["image"].min() >= -1.0 and out["image"].max() <= 1.0
        np.testing.assert_array_equal(out["image"], out["neutral_image"])
        assert out["yaw"] == 10.0
    assert all(not np.allclose(out["image"], image) for out in outs)
    if key == "grey":
        assert np.allclose(outs[0]["image"][..., 0], outs[0]["image"][..., 2])
    # The same generator state gives the same image: what makes resume and N hosts exact.
    np.testing.assert_array_equal(on.random_map(example, np.random.default_rng(2))["image"],
                                  outs[2]["image"])


def test_augmented_loader_resumes_exactly(smoke_config):
    config = smoke_config.data.copy_and_resolve_references()
    config.augment.update(rotation=10.0, resized_crop_scale=0.8, erasing=0.5, brightness=0.2)
    ds = pipeline.open_dataset(config)
    it = iter(pipeline.train_loader(ds, config, global_batch_size=8, seed=1))
    next(it)
    state = it.get_state()
    expected = next(it)["image"]
    resumed = iter(pipeline.train_loader(ds, config, global_batch_size=8, seed=1))
    resumed.set_state(state)
    np.testing.assert_array_equal(next(resumed)["image"], expected)


def test_eval_batches_pad_and_mask_the_last_batch(smoke_config):
    ds = pipeline.open_dataset(smoke_config.data)
    indices = ds.test_indices[:21]
    batches = list(pipeline.eval_batches(ds, indices, global_batch_size=8))
    assert len(batches) == 3
    assert all(b["image"].shape[0] == 8 for b in batches)
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.sum() == 21 and mask[:21].all()
    subjects = np.concatenate([b["subject"] for b in batches])[:21]
    np.testing.assert_array_equal(subjects, ds.labels["subject"][indices])


def test_wrong_image_size_says_how_to_fix(smoke_config):
    smoke_config.data.image_size = 64
    with pytest.raises(pipeline.DataError, match="48x48 images but config.data.image_size=64"):
        pipeline.open_dataset(smoke_config.data)


def test_missing_data_dir_and_unknown_dataset(smoke_config, tmp_path):
    smoke_config.data.name = "synthetic_facez"
    with pytest.raises(pipeline.DataError, match="Known datasets: .*synthetic_faces"):
        pipeline.open_dataset(smoke_config.data)
    smoke_config.data.name = "synthetic_faces"
    smoke_config.data.data_dir = str(tmp_path / "no" / "such" / "dir")
    with pytest.raises(pipeline.DataError, match="parent directory does not exist"):
        pipeline.open_dataset(smoke_config.data)
