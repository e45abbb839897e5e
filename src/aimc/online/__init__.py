"""Online learning, DAgger-style (``aimc online``): the agent plays, a labeller says what it
should have done in every state it reached, and training continues on those labels.

    config.py     OnlineConfig: every knob, the preset ``online_crafter``
    labellers.py  the Labeller interface, the registry and the built-in world's demonstrator
    rounds.py     one round's phases (play, label, store, train, validate) and the resumable loop
    commands.py   ``aimc online``
"""
