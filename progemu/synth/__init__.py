"""SynthCXR: procedural longitudinal chest X-ray pairs with exact counterfactuals, change masks and texts.

    from progemu.synth import SynthCXR, write_dataset, anatomical_prior
    pair = SynthCXR(size=128, seed=0).pair(0)
"""

from progemu.findings import FINDING_KEYS, FINDINGS
from progemu.synth.pairs import GENERATOR_VERSION, SynthCXR, SynthPair
from progemu.synth.regions import anatomical_prior
from progemu.synth.vocabulary import SEVERITIES
from progemu.synth.writer import write_dataset

__all__ = ["FINDINGS", "FINDING_KEYS", "GENERATOR_VERSION", "SEVERITIES", "SynthCXR", "SynthPair",
           "anatomical_prior", "write_dataset"]
