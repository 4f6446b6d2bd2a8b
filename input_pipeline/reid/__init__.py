"""Re-identification datasets: layout readers (one module per dataset as its owners distribute it),
one TFDS builder shared by all of them (`builder`; `splits` prepares a dataset and opens its
splits), the synthetic Market-1501-layout generator, the grain pipeline (`pipeline`) with its
samplers (`sampling`) and image transforms (`transforms`), and `sources` (the user's dataset or
the embedded one)."""
