"""MCUR in JAX/Flax: multimodal emotion recognition robust to missing modalities."""
