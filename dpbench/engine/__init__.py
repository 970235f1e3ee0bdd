"""The one DP training loop shared by every method, and its measurements."""
