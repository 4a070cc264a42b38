"""maasjax: config -> train -> evaluate -> compress -> export -> serve, in JAX/Flax."""
__version__ = "0.1.0"
