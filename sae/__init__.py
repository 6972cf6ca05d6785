"""sae: train sparse autoencoders on neural-network activations and measure what they learn."""

__version__ = "0.1.0"
