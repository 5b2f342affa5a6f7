"""Installing the editor plug-ins: vendored dependencies (vendor.py) and one module per editor."""
