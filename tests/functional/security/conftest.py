"""The stand and the attacker's one run, shared by the attack tests."""

from tests.functional.security.stand import attack, stand

__all__ = ["attack", "stand"]
