"""Using a trained matcher: the loaded model, pair scoring, ranking, saved galleries, explanations.

- :mod:`~smcli.inference.matcher`: :class:`MatchModel`, a model directory loaded once, with
  checks of the files it is given and the Python API (score, search, rank_captions, explain);
- :mod:`~smcli.inference.scoring`: the pair-scoring engine (per-side tensors, pair lists,
  exhaustive grids in chunks, the two-stage score matrices of the protocol);
- :mod:`~smcli.inference.ranking`: the one shortlist-and-re-rank, and ranked results as tables;
- :mod:`~smcli.inference.tasks`: score, caption-rank and retrieve as functions returning tables;
- :mod:`~smcli.inference.gallery`: saved galleries (``smcli index``) and their faiss index;
- :mod:`~smcli.inference.inputs`: pair and candidate files, images given by id or path;
- :mod:`~smcli.inference.explain`: the saliency maps of one image and caption.
"""
