"""The recall protocol: R@K both ways on a split, exhaustive or two-stage (``retrieve --eval``)."""
