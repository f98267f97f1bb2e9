"""prefrl: deep reinforcement learning from human preferences.

The pieces, in the order data flows through them: :mod:`prefrl.segments` cuts segments from the
agent's rollouts; :mod:`prefrl.oracles` compares them; :mod:`prefrl.data` stores the answers;
:mod:`prefrl.reward` fits an ensemble to them; :mod:`prefrl.wrappers` gives its prediction to the
agent; :mod:`prefrl.loop` runs the three processes together.
"""

import os

__version__ = "0.1.0"

# Torch's OpenMP worker threads spin while they wait for work. When another process keeps the cores busy
# (a benchmark grid beside a text run, say) the spinning threads fight it for the cores: a SmolLM2 batch that
# samples in 3 s took 68 s with 2 threads. Waiting passively costs almost nothing on idle cores (read when
# torch loads its OpenMP runtime, so it must be set before torch is imported; a value already set is kept).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
