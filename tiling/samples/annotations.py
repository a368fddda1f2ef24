"""Writing lesion polygons as QuPath GeoJSON and as ASAP/CAMELYON16 XML.

Both files hold the same level-0 vertices. In GeoJSON a lesion is a Polygon whose holes are
interior rings; in XML it is a `_0` annotation and each hole a `_2` (exclusion) annotation.
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np

from tiling.annotations import Lesion

LESION_COLOUR = (200, 0, 0)


def _closed(ring: np.ndarray) -> list[list[float]]:
    points = ring.tolist()
    return points + points[:1]


def lesions_geojson(lesions: list[Lesion]) -> str:
    """A QuPath-style FeatureCollection: one Polygon annotation per lesion, classified by group."""
    features = [{
        "type": "Feature",
        "id": lesion.name,
        "geometry": {"type": "Polygon",
                     "coordinates": [_closed(lesion.exterior)] + [_closed(h) for h in lesion.holes]},
        "properties": {"objectType": "annotation", "name": lesion.name,
                       "classification": {"name": lesion.group, "color": list(LESION_COLOUR)}},
    } for lesion in lesions]
    return json.dumps({"type": "FeatureCollection", "features": features}, indent=1)


def lesions_asap_xml(lesions: list[Lesion]) -> str:
    """ASAP XML: each lesion a `_0` polygon, each of its holes a `_2` polygon, and the groups."""
    root = ET.Element("ASAP_Annotations")
    annotations = ET.SubElement(root, "Annotations")
    rings = [(lesion.name, "_0", lesion.exterior) for lesion in lesions]
    rings += [(f"{lesion.name} hole {j + 1}", "_2", hole)
              for lesion in lesions for j, hole in enumerate(lesion.holes)]
    for name, group, ring in rings:
        annotation = ET.SubElement(annotations, "Annotation", Name=name, Type="Polygon",
                                   PartOfGroup=group, Color="#F4FA58")
        coordinates = ET.SubElement(annotation, "Coordinates")
        for order, (x, y) in enumerate(ring.tolist()):
            ET.SubElement(coordinates, "Coordinate", Order=str(order), X=repr(x), Y=repr(y))
    groups = ET.SubElement(root, "AnnotationGroups")
    for group, colour in (("_0", "#FF0000"), ("_2", "#00FF00")):
        ET.SubElement(ET.SubElement(groups, "Group", Name=group, PartOfGroup="None", Color=colour), "Attributes")
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"

