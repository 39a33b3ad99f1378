"""Generation: constrained batched decoding with CFG, region-specific editing, guidance maps, the batch job.

    from progemu.generation import CounterfactualPipeline, PipelineOptions, GenerationItem
"""

from progemu.generation.decoder import CounterfactualGenerator, DecodeOptions, DecodeOutput
from progemu.generation.guidance import auto_edit_mask, overlay, relevance_grid, upsample
from progemu.generation.pipeline import (
                                         CounterfactualPipeline,
                                         GenerationItem,
                                         GenerationResult,
                                         PipelineOptions,
                                         item_seed,
)
from progemu.generation.region import (
                                         REGION_SOURCES,
                                         asks_no_change,
                                         dilate,
                                         load_user_mask,
                                         parse_finding,
                                         parse_findings,
                                         to_grid,
)
from progemu.generation.sampling import SamplingOptions, select_tokens

__all__ = ["REGION_SOURCES", "CounterfactualGenerator", "CounterfactualPipeline", "DecodeOptions", "DecodeOutput",
           "GenerationItem", "GenerationResult", "PipelineOptions", "SamplingOptions", "auto_edit_mask", "dilate",
           "asks_no_change", "item_seed", "load_user_mask", "overlay", "parse_finding", "parse_findings",
           "relevance_grid", "select_tokens", "to_grid", "upsample"]
