"""Re-identification datasets: layout readers (one module per dataset as its owners distribute it),
one TFDS builder shared by all of them, and the synthetic Market-1501-layout generator."""
