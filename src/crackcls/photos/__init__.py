"""Whole photos: tiling and scanning, crack regions, heat-map overlays and Grad-CAM explanations."""
