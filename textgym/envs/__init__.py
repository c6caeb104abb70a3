"""The text environments, one task per module."""
