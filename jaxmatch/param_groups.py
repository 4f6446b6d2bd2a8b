"""Parameter-group labels shared by models (which label their parameters) and the optimizer (which reads
the labels): one learning rate / optimizer per label, and FROZEN for parameters that no update may touch."""

FROZEN = "frozen"  # torch: requires_grad False, or a parameter absent from the official optimizer
