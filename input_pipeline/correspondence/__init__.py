"""Semantic-correspondence datasets: TFDS builders for SPair-71k, PF-PASCAL and PF-WILLOW as
distributed, synthetic writers in those layouts, the grain pair pipeline with its photometric
augmentation and crop geometry, and `sources` (the user's dataset or the embedded one)."""
