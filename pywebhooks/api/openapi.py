"""``GET /v1/openapi.json``: the OpenAPI 3.1 document of the API.

The document is package data (``openapi.json`` beside this module), read
and checked once, on first use.  Its ``servers`` entry is ``/`` in the file;
the route answers with the prefix the API is actually mounted at, so that a
client of an API mounted at ``/hooks`` gets ``/hooks``.
"""

from __future__ import annotations

import copy
import functools
import json
from importlib import resources
from typing import Any

from klein.interfaces import IKleinRequest
from twisted.web.iweb import IRequest

from pywebhooks.api.base import APIBase, route
from pywebhooks.api.http import json_response

#: The package-data file that holds the document.
DOCUMENT_FILE = "openapi.json"


@functools.cache
def document() -> dict[str, Any]:
    """The document as stored (read once; a copy is safe to change)."""
    text = resources.files(__package__).joinpath(DOCUMENT_FILE).read_text("utf-8")
    return json.loads(text)


@functools.lru_cache(maxsize=8)
def _document_at(prefix: str) -> dict[str, Any]:
    """The document with ``servers`` naming ``prefix`` (``/`` at the root)."""
    mounted = copy.deepcopy(document())
    mounted["servers"] = [dict(server, url=prefix or "/") for server in mounted["servers"]]
    return mounted


class OpenAPIRoutes(APIBase):
    """``/v1/openapi.json``."""

    @route("/v1/openapi.json", "GET")
    async def openapi_document(self, request: IRequest, body: Any) -> bytes:
        """Public: the OpenAPI document of this API."""
        prefix = IKleinRequest(request).mapper.script_name.rstrip("/")
        return json_response(request, 200, _document_at(prefix))
