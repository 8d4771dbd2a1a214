"""The base every record class inherits: room for unknown fields, memory of absent ones."""

from collections.abc import Mapping
from typing import Any

import attrs

__all__ = ["Record"]


@attrs.frozen(kw_only=True)
class Record:
    """Base of every typed record of the API.

    Attributes:
        extra: fields the payload carried that this version of the library does
            not know (a newer API version may add some); kept verbatim so that
            nothing the server sent is lost.

    Fields absent from the payload (as opposed to sent as ``null``) read as
    ``None`` and are remembered, so unstructuring gives back the same keys.

    .. versionadded:: 0.1.0
    """

    extra: Mapping[str, Any] = attrs.field(factory=dict, repr=False)
    _absent: frozenset[str] = attrs.field(
        default=frozenset(), repr=False, eq=False, alias="_absent"
    )
