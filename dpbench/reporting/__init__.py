"""Reports, profiles and regression checks built from result files alone."""
