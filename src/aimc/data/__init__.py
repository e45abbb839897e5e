"""Training data: the episode store and everything that fills and reads it.

* ``store``      - the on-disk episode store (docs/episode-format.md): ``EpisodeStore``, ``Episode``
* ``converters`` - contractor / STEVE-1 / custom recordings -> store (``aimc data convert``)
* ``embed``      - MineCLIP goal embeddings for a store (``aimc data embed``)
* ``split``      - train/val splits by frame budgets (``aimc data split``)
* ``mixture``    - several stores with weights by frames (the 80/20 fine-tuning recipe)
* ``relabel``    - STEVE-1 hindsight goal relabeling
* ``loader``     - ``SequenceDataset`` / ``make_loader``: relabeled training batches
* ``check``      - ``aimc data check`` / ``aimc data stats``
"""
