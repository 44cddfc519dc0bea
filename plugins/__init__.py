"""The built-in plugins, registered through entry points in setup.py exactly like a third party's."""
