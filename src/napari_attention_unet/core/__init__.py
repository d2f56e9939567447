"""Model, prediction and training: numpy, torch and scikit-image only (no Qt, no napari)."""
