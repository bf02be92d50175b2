"""Numbers an engineer can defend: metrics with intervals, thresholds, calibration, familiarity, promotion evidence, model cards."""
