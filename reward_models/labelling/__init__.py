"""Collecting human preferences: a labelling web page where raters rank model completions.

The steps, one module each, run by ``textgym label`` (`reward_models.labelling.cli`)::

    items.py      the batch to label: one JSON line per prompt with its K completions, checked line by line
    selection.py  which items come first: random, or where a reward model (ensemble) is least sure / disagrees
    storage.py    the labels: one fsynced JSON line per answer, replayed on restart so each rater resumes
    server.py     the Starlette app (JSON API + the static page in ``static/``) served by uvicorn
    stats.py      counts, per-rater progress, inter-rater agreement (Krippendorff's alpha)
    export.py     rankings or pairs in the formats ``textgym reward train`` reads

Nothing here imports torch or the web stack at module level; the server's dependencies are the ``label`` extra.
"""
