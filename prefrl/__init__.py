"""prefrl: deep reinforcement learning from human preferences.

The pieces, in the order data flows through them: :mod:`prefrl.segments` cuts segments from the
agent's rollouts; :mod:`prefrl.oracles` compares them; :mod:`prefrl.data` stores the answers;
:mod:`prefrl.reward` fits an ensemble to them; :mod:`prefrl.wrappers` gives its prediction to the
agent; :mod:`prefrl.loop` runs the three processes together.
"""

__version__ = "0.1.0"
