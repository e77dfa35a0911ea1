"""Using a trained model without its data: the checkpoint's inference record, `api.load`, `idfer predict`,
per-image predictions of `idfer evaluate`."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from idfer_jax import api
from idfer_jax.inference import predictor as predictor_lib
from idfer_jax.train import inference_record as record_lib
from tests.conftest import REPO, SHARED_DATA, subprocess_env
from tests.helpers import smoke, tiny_config

STEPS = 4


@pytest.fixture(scope="module")
def trained(smoke_data_dir, tmp_path_factory):
    """A tiny baseline trained for a few steps on the smoke set: (workdir, config). What is checked here
    is that the model used later is the one trained, not that it learned (tests/test_training.py). The
    tests that need it are in the full run (`slow`): training one costs about 40 s of the fast tier."""
    workdir = str(tmp_path_factory.mktemp("predict") / "run")
    config = tiny_config(smoke("baseline"))
    config.data.data_dir = smoke_data_dir
    config.train.update(num_steps=STEPS, checkpoint_every=STEPS, log_every=2)
    api.train(config, workdir)
    return workdir, config


@pytest.fixture(scope="module")
def evaluated(trained):
    """`trained`, evaluated (`predictions.csv` written)."""
    api.evaluate(trained[1], trained[0])
    return trained


def _rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _test_faces(config):
    """The test fold's records as stored (uint8, as a file of them would hold) and their record indices."""
    from idfer_jax.data import datasets

    dataset = datasets.open_dataset(config.data)
    images = np.stack([np.asarray(dataset.source[int(i)]["image"]) for i in dataset.test_indices])
    return images, dataset.test_indices


@pytest.mark.slow
def test_checkpoint_records_what_inference_needs(trained):
    workdir, config = trained
    step_dir = os.path.join(workdir, "checkpoints", str(STEPS))
    record = record_lib.read(step_dir)
    assert record["recipe"] == "baseline"
    assert record["class_names"] == list(config.data.class_names or record["class_names"])
    assert len(record["class_names"]) == 7 and "happiness" in record["class_names"]
    assert record["input"]["shape"] == [48, 48, 3] and record["input"]["range"] == [-1.0, 1.0]
    assert record["framing"]["kind"] == "rendered" and record["framing"]["dataset"] == "synthetic_faces"
    run = record["run"]
    assert run["fold"] == 0 and run["protocol"] == "subject_kfold" and run["num_train"] > run["num_test"] > 0
    saved = json.load(open(os.path.join(step_dir, "config", "metadata")))
    assert run["config_hash"] == record_lib.config_hash(saved)
    # Another value, another hash.
    saved["seed"] = saved["seed"] + 1
    assert record_lib.config_hash(saved) != run["config_hash"]


@pytest.mark.slow
def test_load_needs_no_dataset_and_predicts_as_evaluate(evaluated, monkeypatch):
    workdir, config = evaluated
    images, indices = _test_faces(config)  # read before the data is made unreachable

    import tensorflow_datasets as tfds

    from idfer_jax.data import datasets

    def no_data(*args, **kwargs):
        raise AssertionError("loading a model must not open a dataset")

    monkeypatch.setattr(tfds, "builder", no_data)
    monkeypatch.setattr(datasets, "open_dataset", no_data)
    monkeypatch.setenv("TFDS_DATA_DIR", "/nonexistent")
    predictor = api.load(workdir)
    assert predictor.step == STEPS and predictor.image_shape == (48, 48, 3)
    assert len(predictor.class_names) == 7

    rows = _rows(os.path.join(workdir, "predictions.csv"))
    assert [int(r["record"]) for r in rows] == [int(i) for i in indices]
    expected = np.array([[float(r[f"p_{c}"]) for c in predictor.class_names] for r in rows])
    for batch_size in (64, 5):  # a padded last batch, and several compiled shapes
        got = predictor.predict(images, batch_size=batch_size)
        assert got.shape == expected.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=2e-6)
        np.testing.assert_array_equal(got.argmax(-1), expected.argmax(-1))
    assert [r["predicted"] for r in rows] == [predictor.class_names[k] for k in expected.argmax(-1)]
    assert all(r["correct"] == str(int(r["true"] == r["predicted"])) for r in rows)
    features = predictor.features(images[:3])
    assert features.ndim == 2 and features.shape[0] == 3
    # Files, PIL images and uint8 arrays are the same input.
    path = os.path.join(os.path.dirname(workdir), "face.png")
    Image.fromarray(images[0]).save(path)
    np.testing.assert_allclose(predictor.predict([path, Image.fromarray(images[0])]),
                               np.repeat(expected[:1], 2, 0), atol=2e-6)


@pytest.mark.slow
def test_predictor_refuses_bad_images(trained):
    predictor = api.load(trained[0])
    with pytest.raises(ValueError, match="already preprocessed"):
        predictor.preprocess(np.full((2, 48, 48, 3), 3.0, np.float32))
    with pytest.raises(ValueError, match="uint8"):
        predictor.preprocess(np.zeros((48, 48, 3), np.int64))
    assert predictor.predict(np.zeros((0, 48, 48, 3), np.uint8)).shape == (0, 7)


@pytest.mark.slow
def test_old_checkpoint_says_what_it_lacks_and_evaluate_adds_it(evaluated, tmp_path):
    workdir, config = evaluated
    old = str(tmp_path / "old")
    shutil.copytree(workdir, old)
    shutil.rmtree(os.path.join(old, "checkpoints", str(STEPS), record_lib.ITEM))
    with pytest.raises(predictor_lib.ModelLoadError, match="written before checkpoints described themselves.*"
                       "idfer evaluate"):
        api.load(old)
    api.evaluate(config, old)
    assert api.load(old).class_names == api.load(workdir).class_names


@pytest.mark.slow
def test_load_names_the_runs_below_a_crossval_root_and_missing_steps(trained, tmp_path):
    workdir, _ = trained
    root = tmp_path / "cv"
    shutil.copytree(workdir, root / "fold_0")
    with pytest.raises(predictor_lib.ModelLoadError, match="fold_0"):
        api.load(root)
    with pytest.raises(predictor_lib.ModelLoadError,
                       match=f"no checkpoint at step 7; it has step\\(s\\) .*{STEPS}\\."):
        api.load(workdir, step=7)
    with pytest.raises(predictor_lib.ModelLoadError, match="does not exist"):
        api.load(tmp_path / "nowhere")


@pytest.mark.slow
def test_idfer_predict_command_on_crops_matches_evaluate(evaluated, tmp_path, compilation_cache):
    workdir, config = evaluated
    images, _ = _test_faces(config)
    rows = _rows(os.path.join(workdir, "predictions.csv"))
    folder = tmp_path / "faces"
    (folder / "sub").mkdir(parents=True)
    for k in range(6):
        Image.fromarray(images[k]).save(folder / ("sub" if k % 2 else "") / f"face{k}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "rows.csv"
    command = [sys.executable, "-m", "idfer_jax.main", "predict", f"--workdir={workdir}", str(folder),
               "--no-detect", f"--output={out}", "--batch_size=4"]
    done = subprocess.run(command, capture_output=True, text=True, env=subprocess_env(compilation_cache),
                          cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "1 input(s) could not be read" in done.stderr and "broken.png" in done.stderr
    got = {os.path.basename(r["file"]): r for r in _rows(out)}
    assert sorted(got) == [f"face{k}.png" for k in range(6)]
    for k in range(6):
        row = got[f"face{k}.png"]
        assert row["face"] == "0" and row["frame"] == "0"
        assert [float(row["left"]), float(row["right"])] == [-0.5, 47.5]  # pixel centres on integers
        for c in api.load(workdir).class_names:
            assert abs(float(row[f"p_{c}"]) - float(rows[k][f"p_{c}"])) < 1e-5
        assert row["predicted"] == rows[k]["predicted"]
    skipped = _rows(str(out) + ".skipped.csv")
    assert [os.path.basename(r["file"]) for r in skipped] == ["broken.png"]
    # The output is never overwritten.
    again = subprocess.run(command, capture_output=True, text=True, env=subprocess_env(compilation_cache),
                           cwd=REPO, timeout=600)
    assert again.returncode == 1 and again.stderr.startswith("idfer: error:") and "exists" in again.stderr
    assert "Traceback" not in again.stderr


CKPLUS = SHARED_DATA / "ckplus48"


def _ck_files(count: int) -> list:
    if not CKPLUS.is_dir():
        pytest.skip(f"{CKPLUS} is absent: the real-face check needs the research-only sets in ../shared/data")
    return sorted(CKPLUS.glob("*/*.png"))[:count]


@pytest.mark.slow
def test_predict_gives_one_row_per_face_of_a_photo(trained, tmp_path):
    pytest.importorskip("dlib", reason='detection needs the align extra (pip install "idfer_jax[align]")')
    workdir, _ = trained
    canvas = np.full((200, 400, 3), 128, np.uint8)
    for left, path in zip((20, 220), _ck_files(400)[::399], strict=True):
        face = Image.open(path).convert("RGB").resize((160, 160), Image.BILINEAR)
        canvas[20:180, left:left + 160] = np.asarray(face)
    Image.fromarray(canvas).save(tmp_path / "two.png")
    Image.fromarray(np.full((120, 160, 3), 128, np.uint8)).save(tmp_path / "empty.png")
    out, shots = tmp_path / "rows.jsonl", tmp_path / "annotated"
    summary = api.predict(workdir, [tmp_path / "two.png", tmp_path / "empty.png"], output=str(out),
                          format="jsonl", annotate=str(shots))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["face"] for r in rows] == [0, 1] and summary.faces == 2
    assert all(r["score"] > 0 for r in rows)  # the detector's confidence
    boxes = sorted(r["box"] for r in rows)
    assert boxes[0][2] < boxes[1][0]  # two disjoint faces, one in each half
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-4 for r in rows)
    assert all(r["predicted"] == max(r["probabilities"], key=r["probabilities"].get) for r in rows)
    assert summary.no_face == [(str(tmp_path / "empty.png"), 0)]
    drawn = list(shots.rglob("*.png"))
    assert len(drawn) == 1 and not np.array_equal(np.asarray(Image.open(drawn[0])), canvas)


@pytest.mark.slow
def test_predict_reads_video_frames_at_a_rate(trained, tmp_path):
    av = pytest.importorskip("av", reason='video needs the video extra (pip install "idfer_jax[video]")')
    workdir, _ = trained
    path = tmp_path / "clip.mp4"
    with av.open(str(path), mode="w") as container:  # 3 s at 10 frames per second
        stream = container.add_stream("mpeg4", rate=10)
        stream.width = stream.height = 48
        stream.pix_fmt = "yuv420p"
        for index in range(30):
            picture = np.full((48, 48, 3), 8 * index, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    out = tmp_path / "rows.csv"
    summary = api.predict(workdir, [path], output=str(out), fps=2, detect=False)
    rows = _rows(out)
    assert summary.frames == len(rows) == 6
    assert [int(r["frame"]) for r in rows] == [0, 5, 10, 15, 20, 25]
    assert [float(r["time_s"]) for r in rows] == pytest.approx([0, 0.5, 1.0, 1.5, 2.0, 2.5], abs=0.01)


@pytest.mark.slow
def test_ckplus_test_fold_through_evaluate_and_predict_agree(tmp_path, compilation_cache):
    """The same CK+48 test fold: `idfer evaluate` on the prepared records, `idfer predict --no-detect` on
    the image files they came from."""
    _ck_files(1)
    workdir, data_dir = tmp_path / "run", tmp_path / "tfds"
    config = tiny_config(str(REPO / "configs" / "baseline_ckplus.py"))
    config.data.update(manual_dir=str(CKPLUS), data_dir=str(data_dir))
    config.train.update(num_steps=20, checkpoint_every=20, log_every=10)
    api.train(config, str(workdir))
    api.evaluate(config, str(workdir))
    evaluated = _rows(workdir / "predictions.csv")
    assert len(evaluated) > 50 and all(r["file"] and r["subject"] for r in evaluated)
    shutil.rmtree(data_dir)  # the model no longer needs the prepared data
    out = tmp_path / "rows.csv"
    done = subprocess.run(
        [sys.executable, "-m", "idfer_jax.main", "predict", f"--workdir={workdir}", "--no-detect",
         f"--output={out}", *(str(CKPLUS / r["file"]) for r in evaluated)],
        capture_output=True, text=True, env=subprocess_env(compilation_cache), cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    predicted = _rows(out)
    assert [os.path.relpath(r["file"], CKPLUS) for r in predicted] == [r["file"] for r in evaluated]
    assert [r["predicted"] for r in predicted] == [r["predicted"] for r in evaluated]
    classes = [k for k in evaluated[0] if k.startswith("p_")]
    np.testing.assert_allclose([[float(r[k]) for k in classes] for r in predicted],
                               [[float(r[k]) for k in classes] for r in evaluated], atol=1e-5)
    # The exported model gives the same outputs on these real faces, in its own runtime.
    faces = [str(CKPLUS / r["file"]) for r in evaluated[:16]]
    for fmt in ("saved_model", "tflite"):
        entry = api.export(workdir, tmp_path / "export", fmt, check_images=faces)
        assert entry["checked_on"] == "16 given images"
        assert max(entry["max_abs_difference"].values()) < 1e-4, entry


@pytest.mark.slow
def test_idfer_export_writes_checked_files_and_a_card_and_never_overwrites(trained, tmp_path,
                                                                          compilation_cache):
    workdir, _ = trained
    out = tmp_path / "export"
    env = subprocess_env(compilation_cache)
    for fmt in ("saved_model", "tflite"):
        done = subprocess.run([sys.executable, "-m", "idfer_jax.main", "export", f"--workdir={workdir}",
                               f"--format={fmt}", f"--output={out}"], capture_output=True, text=True, env=env,
                              cwd=REPO, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
    card = json.loads((out / "model_card.json").read_text())
    assert set(card["export"]) == {"saved_model", "tflite"}  # the second export added to the card
    assert card["class_names"] == list(api.load(workdir).class_names)
    for fmt, entry in card["export"].items():
        assert all(entry["max_abs_difference"][k] <= entry["tolerance"][k] for k in entry["tolerance"]), fmt
    assert card["export"]["tflite"]["images_per_second_batch_1"] > 0
    text = (out / "model_card.md").read_text()
    assert all(c in text for c in card["class_names"]) and "rendered faces" in json.dumps(card)
    again = subprocess.run([sys.executable, "-m", "idfer_jax.main", "export", f"--workdir={workdir}",
                            "--format=tflite", f"--output={out}"], capture_output=True, text=True, env=env,
                           cwd=REPO, timeout=600)
    assert again.returncode == 1 and "exists" in again.stderr and "Traceback" not in again.stderr


FOUR_DEVICES = r"""
import sys
import jax
import numpy as np
assert len(jax.local_devices()) == 4, jax.local_devices()
from idfer_jax import api
predictor = api.load(sys.argv[1])
assert predictor.mesh.size == 4
images = np.load(sys.argv[2])
np.save(sys.argv[3], predictor.predict(images, batch_size=8))
"""


@pytest.mark.slow
def test_predictions_split_over_four_devices_equal_one(trained, tmp_path, compilation_cache):
    workdir, config = trained
    images, _ = _test_faces(config)
    images = images[:13]  # batches of 8 and 5 (padded to 8): both split over the 4 devices
    np.save(tmp_path / "images.npy", images)
    env = subprocess_env(compilation_cache, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    done = subprocess.run([sys.executable, "-c", FOUR_DEVICES, workdir, str(tmp_path / "images.npy"),
                           str(tmp_path / "four.npy")], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "four.npy"), api.load(workdir).predict(images), atol=2e-6)


@pytest.mark.slow
def test_predict_refuses_outputs_that_would_replace_or_hide_files(trained, tmp_path):
    from idfer_jax.data.errors import DataError
    from idfer_jax.inference.predict_files import OutputError

    workdir, _ = trained
    faces = tmp_path / "faces"
    (faces / "a").mkdir(parents=True)
    (faces / "b").mkdir()
    for sub in ("a", "b"):  # two inputs of one name
        Image.fromarray(np.full((48, 48, 3), 90, np.uint8)).save(faces / sub / "x.png")
    with pytest.raises(OutputError, match="holds the input"):  # it would hide the inputs from the walk
        api.predict(workdir, [faces], annotate=str(faces), detect=False)
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "mine.png").write_bytes(b"mine")
    with pytest.raises(OutputError, match="not empty"):
        api.predict(workdir, [faces], annotate=str(tmp_path / "used"), detect=False)
    (tmp_path / "rows.csv.skipped.csv").write_text("mine")
    with pytest.raises(OutputError, match="skipped.csv exists"):
        api.predict(workdir, [faces], output=str(tmp_path / "rows.csv"), detect=False)
    assert (tmp_path / "rows.csv.skipped.csv").read_text() == "mine"
    with pytest.raises(ValueError, match="fps"):
        api.predict(workdir, [faces], fps=float("inf"), detect=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image or video file"):
        api.predict(workdir, [tmp_path / "empty"], detect=False)
    with pytest.raises(DataError, match="No input could be read"):
        api.predict(workdir, [tmp_path / "missing.png"], detect=False)
    shots = tmp_path / "shots"
    api.predict(workdir, [str(faces / "a" / "x.png"), str(faces / "b" / "x.png")], annotate=str(shots),
                output=str(tmp_path / "ok.csv"), detect=False)
    assert len(list(shots.rglob("*.png"))) == 2  # neither drawing replaced the other
    assert not list(tmp_path.glob("*.partial"))


@pytest.mark.slow
def test_predictor_refuses_silently_wrong_inputs_and_damaged_records(trained, tmp_path):
    workdir, _ = trained
    predictor = api.load(workdir)
    with pytest.raises(ValueError, match=r"none below 0.*\[0, 1\]"):
        predictor.predict(np.full((2, 48, 48, 3), 0.5, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        predictor.predict(np.full((2, 48, 48, 3), np.nan, np.float32))
    with pytest.raises(ValueError, match="channels"):
        predictor.predict(np.zeros((3, 48, 48), np.uint8))  # channels first
    with pytest.raises(TypeError, match="images must be"):
        predictor.predict(None)
    from idfer_jax.data.errors import DataError

    with pytest.raises(DataError, match="Cannot read .*nope.png"):
        predictor.predict(str(tmp_path / "nope.png"))
    assert predictor.features([]).shape[0] == 0 and predictor.features([]).ndim == 2
    assert predictor.features([]).shape[1] == predictor.features(np.zeros((1, 48, 48, 3), np.uint8)).shape[1]
    with pytest.raises(predictor_lib.ModelLoadError, match="step must be an integer"):
        api.load(workdir, step="abc")
    with pytest.raises(predictor_lib.ModelLoadError, match=f"--workdir={workdir}"):
        api.load(os.path.join(workdir, "checkpoints"))
    edited = tmp_path / "edited"
    shutil.copytree(workdir, edited)
    path = record_lib.path(str(edited / "checkpoints" / str(STEPS)))
    record = json.load(open(path))
    record["class_names"] = record["class_names"][::-1]  # columns would be mislabelled
    json.dump(record, open(path, "w"))
    with pytest.raises(predictor_lib.ModelLoadError, match="damaged or was edited.*class_names"):
        api.load(edited)


def test_framing_without_detection_and_with_the_dataset_box(tmp_path):
    from idfer_jax.inference import faces

    photo = np.zeros((100, 200, 3), np.uint8)
    photo[20:80, 60:140] = 200  # the "face" inside a fixed box of rows 20-80, columns 60-140
    whole = faces.Framer({"kind": "dataset_crop", "crop_box": None}, 32, detect=False).frame(photo)
    assert len(whole) == 1 and whole[0].box == (49.5, -0.5, 149.5, 99.5)  # the centred square
    box = {"kind": "dataset_crop", "crop_box": [0.2, 0.3, 0.8, 0.7], "dataset": "jaffe", "config": "64px"}
    cut = faces.Framer(box, 32, detect=False, dataset_crop=True).frame(photo)
    assert cut[0].box == (69.5, 19.5, 129.5, 79.5)  # the box's centred square, in the photo's pixels
    assert cut[0].crop.shape == (32, 32, 3) and cut[0].crop.min() == 200
    assert whole[0].crop.min() == 0
    with pytest.raises(ValueError, match="no-detect"):
        faces.Framer(box, 32, detect=True, dataset_crop=True)
    pytest.importorskip("dlib", reason='detection needs the align extra (pip install "idfer_jax[align]")')
    detector = faces.Framer(box, 32, detect=True)
    assert detector.frame(np.zeros((1, 500, 3), np.uint8)) == []  # a line of pixels: no face, no error


def test_cli_refuses_a_negated_switch_with_a_value_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "idfer_jax.main", "predict", f"--workdir={tmp_path}",
                           "x.png", "--nodetect=false"], capture_output=True, text=True, cwd=REPO,
                          timeout=300)
    assert done.returncode == 2 and done.stderr.startswith("idfer: error:") and "Traceback" not in done.stderr


def test_export_joins_only_the_card_of_the_same_model(tmp_path):
    from idfer_jax.inference import export

    card = {"training": {"config_hash": "abc", "step": 300}}
    assert export._earlier_exports(str(tmp_path), card) == {}
    (tmp_path / "model_card.json").write_text(json.dumps({**card, "export": {"tflite": {"file": "x"}}}))
    assert export._earlier_exports(str(tmp_path), card) == {"tflite": {"file": "x"}}
    with pytest.raises(export.ExportExistsError, match="another model .*step 300.*step 1"):
        export._earlier_exports(str(tmp_path), {"training": {"config_hash": "abc", "step": 1}})
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "model_card.md").write_text("my own card")
    with pytest.raises(export.ExportExistsError, match="not written by idfer export"):
        export._earlier_exports(str(mine), card)


@pytest.mark.slow
def test_idfer_evaluate_reads_the_config_from_the_checkpoint(evaluated, tmp_path, compilation_cache):
    workdir, _ = evaluated
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    (copy / "predictions.csv").unlink()
    done = subprocess.run([sys.executable, "-m", "idfer_jax.main", "evaluate", f"--workdir={copy}"],
                          capture_output=True, text=True, env=subprocess_env(compilation_cache), cwd=REPO,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (copy / "predictions.csv").read_text() == open(os.path.join(workdir, "predictions.csv")).read()
