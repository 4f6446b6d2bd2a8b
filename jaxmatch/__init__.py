"""jaxmatch: image-matching systems (TransforMatcher, TransMatcher, TransReID, NFormer, KPM) in JAX/Flax."""

__version__ = "0.1.0"
