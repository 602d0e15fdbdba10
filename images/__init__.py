"""The operator, trainer and pause images, built without a Docker engine (see README.md)."""
