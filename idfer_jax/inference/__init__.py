"""Using a trained model: load it from its workdir, predict on new faces, export it.

(What a checkpoint stores for all of this, `idfer_jax.train.inference_record`, is written by the trainer.)

- `predictor`: `load(workdir) -> Predictor` (no dataset, no TFDS, no Trainer);
- `faces`: frame a raw photo the way the training data was framed (detect + align, or the whole image);
- `inputs`: image files, folders and video frames as RGB arrays, unreadable files listed;
- `export`: SavedModel / TFLite through jax2tf, checked in their own runtimes, with a model card.
"""
