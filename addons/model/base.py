"""Shared pieces of every model: camelCase aliases, strictness, unknown fields kept."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr
from pydantic.alias_generators import to_camel

from ..errors import Location
from ..source import Document, FieldPath

# Kubernetes sub-objects that stashflow passes through unchanged (the API server checks them).
KubeDict = dict[str, Any]


class Model(BaseModel):
    """Strict like the API server (a number is not a string), and lossless: fields that
    stashflow does not know are kept in ``model_extra`` and written back out."""

    model_config = ConfigDict(
        extra="allow",
        strict=True,
        populate_by_name=True,
        alias_generator=to_camel,
        validate_assignment=False,
    )

    def dump(self) -> dict[str, Any]:
        """The object as the user wrote it (camelCase, unset fields left out, extras kept)."""
        return self.model_dump(by_alias=True, exclude_unset=True, mode="json")


class ObjectMeta(Model):
    name: str | None = None
    generate_name: str | None = None
    namespace: str | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


class ObjectReference(Model):
    """kmapi.ObjectReference: ``{name, namespace}``."""

    name: str
    namespace: str | None = None


class TypedObjectReference(Model):
    """kmapi.TypedObjectReference: a target such as ``PersistentVolumeClaim/data``."""

    api_group: str | None = None
    kind: str | None = None
    name: str
    namespace: str | None = None


class KubeObject(Model):
    """A top-level object; remembers the document it was read from for error locations."""

    api_version: str
    kind: str
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)

    API_VERSION: ClassVar[str] = ""
    KIND: ClassVar[str] = ""
    NAMESPACED: ClassVar[bool] = True

    _doc: Document | None = PrivateAttr(default=None)

    @property
    def name(self) -> str:
        return self.metadata.name or ""

    @property
    def namespace(self) -> str | None:
        return self.metadata.namespace

    @property
    def ref(self) -> str:
        """How errors name the object: ``Addon "postgres-addon"``."""
        if self.NAMESPACED and self.metadata.namespace:
            return f'{self.kind} "{self.metadata.namespace}/{self.name}"'
        return f'{self.kind} "{self.name}"'

    @property
    def file(self) -> str | None:
        return self._doc.file if self._doc else None

    def location(self, path: FieldPath = ()) -> Location | None:
        """File and line of ``path`` inside this object, when it was read from a file."""
        return self._doc.location(path) if self._doc else None
