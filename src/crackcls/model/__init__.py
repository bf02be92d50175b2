"""The Keras model: building backbones, feature caches, training loops (one process or many), post-train fitting, inference."""
