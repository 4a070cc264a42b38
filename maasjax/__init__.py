"""maasjax: config -> train -> evaluate -> export -> serve, in JAX/Flax."""
__version__ = "0.1.0"
