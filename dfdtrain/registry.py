"""One small registry class for every family (datasets, decoders, backbones, heads, ...).

Adding a member is one decorated function or class: ``@DATASETS.register("dfdc")``.
"""

import difflib


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

    def get(self, name):
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._entries, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise KeyError(f"unknown {self.family} {name!r}{hint} (known: {', '.join(self.names())})") from None

    def names(self):
        return sorted(self._entries)

    def __contains__(self, name):
        return name in self._entries
