"""The model: scorecards, boosters and bundles."""
