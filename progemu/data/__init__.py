"""Data: image ingestion, the record schema and loaders for the real formats."""

from progemu.data.icg_cxr import load_icg_cxr
from progemu.data.ingest import IngestOptions, from_pixel_values, load_image, to_pixel_values
from progemu.data.loaders import FORMATS, load_records
from progemu.data.mimic_cxr import extract_sections, load_mimic_cxr
from progemu.data.mimic_edit import load_mimic_edit, parse_instruction, parse_instructions
from progemu.data.records import CHEXPERT_LABELS, SPLITS, CXRRecord, EditOp, Report

__all__ = [
    "CHEXPERT_LABELS",
    "FORMATS",
    "SPLITS",
    "CXRRecord",
    "EditOp",
    "IngestOptions",
    "Report",
    "extract_sections",
    "from_pixel_values",
    "load_icg_cxr",
    "load_image",
    "load_mimic_cxr",
    "load_mimic_edit",
    "load_records",
    "parse_instruction",
    "parse_instructions",
    "to_pixel_values",
]
