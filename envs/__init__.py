"""Gymnasium environments that ship with prefrl (imports only gymnasium and numpy).

Importing this package registers:

- ``prefrl/TextContinuation-v0``: continue a prompt from the shipped corpus, one word per step
  (:class:`envs.text.TextContinuationEnv`).
"""

from gymnasium.envs.registration import register, registry

if "prefrl/TextContinuation-v0" not in registry:
    register(id="prefrl/TextContinuation-v0", entry_point="envs.text:TextContinuationEnv")
