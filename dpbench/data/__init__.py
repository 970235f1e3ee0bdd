"""Datasets: registered loaders returning (images in [-1, 1], float32 [N, C, H, W]; labels int64 [N])."""
