"""
Where third-party balancing algorithms are found (C{twisted.plugin}).

A module here, or in any folder C{lbproxy/plugins/} (without an
C{__init__.py}) under a C{sys.path} entry, that has a module-level object
providing C{lbproxy.balancing.IBalancerFactory} and
C{twisted.plugin.IPlugin} adds an algorithm under its C{name}: see the
README's "Balancing plugins".
"""

from typing import List

from twisted.plugin import pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))  # type: ignore[name-defined]
__all__: List[str] = []
