"""Images: safe decoding, input listing, CNN backbones and the extract-regions stage.

Importing this package does not import torch; the backbones load it when they are built.
"""
