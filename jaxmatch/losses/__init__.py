"""Re-identification losses: (label-smoothed) cross-entropy, batch-hard triplet, center loss."""
from jaxmatch.losses.center import center_loss, init_centers
from jaxmatch.losses.classification import accuracy, cross_entropy, smoothed_targets
from jaxmatch.losses.triplet import (TripletOutput, hard_example_mining, normalize_rows,
                                     pairwise_distances, triplet_loss)

__all__ = [
    "TripletOutput", "accuracy", "center_loss", "cross_entropy",
    "hard_example_mining", "init_centers", "normalize_rows", "pairwise_distances",
    "smoothed_targets", "triplet_loss",
]
