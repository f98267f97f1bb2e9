"""Gymnasium environments that ship with prefrl (imports only gymnasium and numpy)."""
