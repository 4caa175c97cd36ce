"""sieve: importance-weighted scheduled retraining of an e-commerce ranking model."""
