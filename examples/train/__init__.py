"""A tiny training job used by the train examples and tests."""
