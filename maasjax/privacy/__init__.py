"""Private training: DP-SGD (per-example clipping + Gaussian noise), Poisson sampling, the epsilon it buys
(dp-accounting), and a membership-inference check of the trained model."""
