"""Training utilities: data preparation and Masked Autoencoder training helpers."""
