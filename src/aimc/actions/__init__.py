"""Action spaces and recorded-data conversion.

* :mod:`aimc.actions.minecraft`: MineRL env actions <-> factored <-> joint policy indices.
* :mod:`aimc.actions.contractor`: VPT contractor recordings (mp4 + jsonl) -> frames and actions.
* :mod:`aimc.actions.image`: frame resizing exactly as the original agent and MineCLIP see it.
* :mod:`aimc.actions.discrete`: a plain discrete action space (the built-in world).

Import the submodule you need; this package imports nothing heavy on its own.
"""
