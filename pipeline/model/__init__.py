"""The text encoder, features and the ranker: what is trained, scored and measured."""
