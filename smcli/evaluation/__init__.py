"""The recall protocol and batched scoring of image x caption sets."""
