"""``smcli serve``: a saved gallery searched from a web page and a JSON API.

``engine.py`` answers queries (the model and gallery loaded once), ``files.py`` decides
which image files may be sent, ``server.py`` is the HTTP layer, and ``static/`` the page.
"""
