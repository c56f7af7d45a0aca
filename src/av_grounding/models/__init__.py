"""Models: the built-in tiny Cosmos Reason architectures, and loading real ones."""
