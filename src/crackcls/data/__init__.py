"""Images in: downloads, safe archive extraction, decoding, de-duplicated splits, manifests and tf.data pipelines."""
