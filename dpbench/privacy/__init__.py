"""Privacy: accounting / noise calibration and the registered workarounds for Opacus' grad samplers."""
