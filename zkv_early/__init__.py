"""The boot client (``zkv-early.pyz``) and its build: the zipapp and the initramfs file list.

It runs in the initramfs, imports the shared core (``zkv``) and nothing of the admin CLI or the
gateway. Nothing runs at import time; the zipapp's entry point is ``__main__.py``.
"""
