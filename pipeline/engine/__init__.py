"""The math of style transfer and the in-process runner: statistics, WCT, the cascade, tiling, controls."""
