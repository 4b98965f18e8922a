"""One small registry class for every family (datasets, decoders, backbones, heads, engines, ...).

Adding a member is one decorated function or class: ``@DATASETS.register("dfdc")``. Looking up a name that
is not there raises ``UnknownName``: one line with the closest names and the known ones (a DfdError, so the
CLI prints it as such, and a KeyError, as a lookup failure).
"""

import difflib

from dfdtrain.core.errors import DfdError


class UnknownName(DfdError, KeyError):
    def __str__(self):  # KeyError would quote the message
        return str(self.args[0])


class Registry:
    def __init__(self, family):
        self.family = family
        self._entries = {}

    def register(self, name):
        def add(obj):
            if name in self._entries:
                raise ValueError(f"{self.family} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return add

    def unknown_name_message(self, name):
        close = difflib.get_close_matches(str(name), self._entries, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        return f"unknown {self.family} {name!r}{hint} (known: {', '.join(self.names())})"

    def problem(self, name):
        """None when ``name`` is registered, else why not, as a config check says it after the key: "names no
        <family>: unknown <family> ..." with the closest and the known names."""
        return None if name in self else f"names no {self.family}: {self.unknown_name_message(name)}"

    def get(self, name):
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise UnknownName(self.unknown_name_message(name)) from None

    def names(self):
        """The names, sorted (for messages that list what is known)."""
        return sorted(self._entries)

    def __iter__(self):
        """The names in the order they were registered (for choices shown in a fixed order)."""
        return iter(self._entries)

    def __contains__(self, name):
        try:
            return name in self._entries
        except TypeError:  # an unhashable value from a config file
            return False
