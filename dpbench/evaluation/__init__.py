"""Evaluation: sampling, downstream classifiers, FID / precision / recall."""
