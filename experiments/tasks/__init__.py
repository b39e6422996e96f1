"""The shipped tasks: each is a row of ``catalog.py`` and a module that registers it, imported
by ``registry.get_task`` on first use (so importing this package builds nothing)."""
