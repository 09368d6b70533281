"""Shared by every test folder. pytest puts this folder on sys.path (rootdir-relative
"prepend" imports), which makes `tests/pins.py` importable as `pins`."""
