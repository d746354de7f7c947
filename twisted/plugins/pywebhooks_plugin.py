"""The ``twist pywebhooks`` plugin.

``twisted.plugins`` is a namespace package: this directory has no
``__init__.py`` (neither has ``twisted/``), so installing PyWebhooks adds
this file to Twisted's own plugin directory.  ``ServiceMaker`` imports
``pywebhooks.tap`` only when the plugin is used, so ``twist --help`` stays
fast.
"""

from __future__ import annotations

from twisted.application.service import ServiceMaker

pywebhooks = ServiceMaker(
    "PyWebhooks",
    "pywebhooks.tap",
    "A webhooks service: signed deliveries with durable retries.",
    "pywebhooks",
)
