"""`CounterfactualPipeline`: prior image + prompt -> counterfactual image + interpretation + guidance map.

    from progemu.generation import CounterfactualPipeline, PipelineOptions, GenerationItem
    pipe = CounterfactualPipeline.from_pretrained("runs/finetune-tiny/final")
    results = pipe([GenerationItem("a", image="prior.png", prompt="Moderate left pleural effusion has developed.")],
                   PipelineOptions(region="auto", tau=0.1))
    results[0].image, results[0].text, results[0].guidance

Modes: ``counterfactual`` (default; task ``icg`` or ``edit``), ``report2image`` (the prompt is a report, no
prior) and ``image2report`` (the prior is described; no prompt). Seeds derive from (seed, item id, sample), so
an item's output never depends on its batch or on the order of the manifest.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from progemu.errors import ProgEmuError
from progemu.generation.decoder import CounterfactualGenerator, DecodeOptions
from progemu.generation.fidelity import reconstruction_scores, unfamiliar
from progemu.generation.guidance import METHODS, auto_edit_mask, change_grid, relevance_grid, upsample
from progemu.generation.region import (
    REGION_SOURCES,
    anatomy_map,
    asks_no_change,
    coverage_grid,
    dilate,
    load_user_mask,
    parse_finding,
    parse_findings,
    paste_prior,
    to_grid,
)
from progemu.image_codes import decode_codes, encode_images, image_tokenizer, ingest_options
from progemu.io import file_stamp

MODES: tuple[str, ...] = ("counterfactual", "report2image", "image2report")
CFG_NULLS: tuple[str, ...] = ("unconditional", "prior", "both")
PASTE_RING = 1  # cells around a changed code whose pixels come from the VQ decoder with --paste-prior


@dataclass
class PipelineOptions:
    """What to generate and how; ``decode`` holds sampling and CFG."""

    mode: str = "counterfactual"
    task: str = "icg"  # counterfactual mode: "icg" (progression prompt) or "edit" (instruction)
    decode: DecodeOptions = field(default_factory=DecodeOptions)
    region: str = "none"  # default edit-mask source for items that name none: none | mask | anatomy | auto
    tau: float = 0.1  # threshold of the automatic mask (0 = unrestricted)
    dilate: int = 1  # cells added around a mask (a local edit spreads over neighbouring codes)
    # keep the prior's pixels wherever its codes were kept: outside the edit mask, and inside it beyond one cell of
    # any changed code (region.paste_prior); only the changed cells and their ring come from the VQ decoder
    paste_prior: bool = False
    guidance: str = "kl"  # kl | nll | none
    num_samples: int = 1
    seed: int = 0
    # the CFG branch: "unconditional" drops prior and prompt (ProgEmu / Emu3, trained by cfg_dropout); "prior" keeps
    # the prior and drops the prompt (InstructPix2Pix's text guidance, trained by prompt_dropout), so the scale
    # amplifies what the prompt changes and not the copy of the prior as well; "both" guides the image codes with
    # three branches (decode.cfg_prior scales the prior over the unconditional branch, decode.cfg_image the prompt
    # over the prior) and the text against the unconditional branch
    cfg_null: str = "unconditional"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.region not in REGION_SOURCES:
            raise ValueError(f"region must be one of {REGION_SOURCES}, got {self.region!r}")
        if self.guidance not in (*METHODS, "none"):
            raise ValueError(f"guidance must be one of {(*METHODS, 'none')}, got {self.guidance!r}")
        if self.region == "auto" and self.guidance == "none":
            raise ValueError("region 'auto' needs a guidance map (guidance 'kl' or 'nll')")
        if self.paste_prior and self.region == "none":
            raise ValueError("paste_prior keeps the prior's pixels outside the edit region, and region 'none' sets no "
                             "region: use region 'mask' (the manifest's masks), 'anatomy' or 'auto'")
        if self.num_samples < 1:
            raise ValueError("num_samples must be >= 1")
        if self.cfg_null not in CFG_NULLS:
            raise ValueError(f"cfg_null must be one of {CFG_NULLS}, got {self.cfg_null!r}")
        if self.decode.cfg_prior != 1.0 and self.cfg_null != "both":
            raise ValueError(f"cfg_prior is the prior branch's scale in three-branch guidance: it needs cfg_null "
                             f"'both', not {self.cfg_null!r}")
        if self.cfg_null in ("prior", "both") and self.mode != "counterfactual":
            raise ValueError(f"cfg_null {self.cfg_null!r} needs a prior and a prompt to drop: mode 'counterfactual', "
                             f"not {self.mode!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class GenerationItem:
    """One input. ``region`` overrides the default source; any other text names the finding (and side) whose
    anatomical prior bounds the edit, e.g. "left pleural effusion"."""

    id: str
    image: str | Path | np.ndarray | None = None
    prompt: str = ""
    mask: str | Path | np.ndarray | None = None  # a path, or a (H, W) bool array already loaded
    region: str | None = None


@dataclass
class GenerationResult:
    id: str
    sample: int
    seed: int
    text: str
    image: np.ndarray | None = None  # (H, W) float32 in [0, 1]
    codes: torch.Tensor | None = None  # (h, w)
    prior: np.ndarray | None = None  # (H, W) float32 in [0, 1]
    guidance: np.ndarray | None = None  # (H, W) float32 in [0, 1]: where the model changed the image (change map)
    relevance: np.ndarray | None = None  # (H, W) float32 in [0, 1]: where the prompt asked it to (relevance x anatomy)
    edit_mask: torch.Tensor | None = None  # (h, w) bool, True = sampled
    region: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    # the prior encoded and decoded by the checkpoint's tokenizer: {"psnr", "ssim"}, and a warning when far below
    # the tokenizer's own validation figures (`fidelity.unfamiliar`)
    prior_reconstruction: dict[str, float] | None = None
    warning: str | None = None


def weights_fingerprint(path: str | Path) -> str:
    """The model folder and the size and time of its weight and config files: a re-run of a batch job redoes
    the items made with other weights (say a newer checkpoint in the same folder) instead of keeping them."""
    root = Path(path).resolve()
    patterns = ("*.safetensors", "*.bin", "*.json", "vq/*.safetensors", "vq/*.bin", "vq/*.json")
    files = sorted(f for pattern in patterns for f in root.glob(pattern))
    stamp = ";".join(file_stamp(f) for f in files)
    return f"{root}#{zlib.crc32(stamp.encode()):08x}"


def item_seed(seed: int, item_id: str, sample: int) -> int:
    """A seed fixed by (run seed, item id, sample index) alone."""
    return zlib.crc32(f"{seed}:{item_id}:{sample}".encode()) & 0x7FFFFFFF


class CounterfactualPipeline:
    """Model (with its image tokenizer, ``model.vqmodel``) + processor -> batched counterfactuals, interpretations
    and guidance maps."""

    def __init__(self, model: torch.nn.Module, processor: Any, source: str | None = None):
        self.model = model.eval()
        self.source = source  # what the weights came from (`weights_fingerprint`), recorded with every output
        self.processor = processor
        self.layout = processor.layout
        self.generator = CounterfactualGenerator(self.model, self.layout)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device | None = None,
                        dtype: torch.dtype | str | None = None) -> CounterfactualPipeline:
        """Load a model folder (`save_pretrained` of the model and the processor; the model's VQ in ``vq/``)."""
        from progemu.modeling_progemu import ProgEmuForCausalLM
        from progemu.processing_progemu import ProgEmuProcessor

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if dtype is None:  # the saved dtype on GPUs; on CPUs fp32, since a bf16-saved checkpoint decodes slower there
            dtype = torch.float32 if torch.device(device).type == "cpu" else "auto"
        model = ProgEmuForCausalLM.from_pretrained(str(path), dtype=dtype).to(device)
        processor = ProgEmuProcessor.from_pretrained(str(path))
        processor.check_model_config(model.config)
        if model.vqmodel is not None:  # the model's image tokenizer (from vq/) is no submodule: `.to` skips it
            model.vqmodel.to(device)
        # the dtype too: bf16 and fp32 outputs of the same weights differ
        return cls(model, processor, source=f"{weights_fingerprint(path)}:{next(model.parameters()).dtype}")

    # ---- inputs -------------------------------------------------------------------------------------------
    def load_prior(self, image: str | Path | np.ndarray) -> np.ndarray:
        """A path or a (H, W) [0, 1] array -> the float32 array the VQ reads (IngestError names a bad file)."""
        if isinstance(image, (str, Path)):
            from progemu.data.ingest import load_image

            return load_image(image, ingest_options(self.model, self.processor))
        return np.asarray(image, dtype=np.float32)

    def region_mask(self, item: GenerationItem, opts: PipelineOptions, size: tuple[int, int],
                    relevance: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None, dict]:
        """(edit mask (h, w) bool or None, anatomy coverage (h, w) or None, a description for the record)."""
        lay = self.layout
        finding_text = item.region if item.region and item.region not in REGION_SOURCES else None
        if item.mask is not None:
            source = "mask"
        elif item.region in REGION_SOURCES:
            source = item.region
        elif finding_text:  # a finding named for this item: bound the edit by its anatomy
            source = "auto" if opts.region == "auto" else "anatomy"
        else:
            source = opts.region
        info: dict[str, Any] = {"source": source}
        if source == "mask" and item.mask is None:
            raise ProgEmuError(f"item {item.id!r}: region 'mask' but no mask file given")
        if source == "none":
            return None, None, info
        if source == "mask":
            arr = item.mask if isinstance(item.mask, np.ndarray) else load_user_mask(item.mask)
            return dilate(to_grid(arr, lay.grid_h, lay.grid_w), opts.dilate), None, info
        if not finding_text and asks_no_change(item.prompt):  # "No significant change ...": edit no cell
            info["note"] = "the prompt changes no finding: nothing edited"
            return torch.zeros(lay.grid_h, lay.grid_w, dtype=torch.bool), None, info
        if finding_text:
            one = parse_finding(finding_text)
            if one is None:
                raise ProgEmuError(f"item {item.id!r}: region {finding_text!r} names no known finding")
            named = [one]
        else:  # every finding the prompt changes: a region around the first alone would forbid the others
            named = parse_findings(item.prompt)
        anatomy = None
        if named:
            info.update(finding=named[0][0], laterality=named[0][1])
            if len(named) > 1:
                info["findings"] = [list(n) for n in named]
            maps = [m for key, side in named if (m := anatomy_map(key, max(size), side)) is not None]
            if not maps:
                info["note"] = "no anatomical prior available"
            else:  # the union of the findings' priors, as the fraction of each cell
                anatomy = coverage_grid(np.maximum.reduce(maps), lay.grid_h, lay.grid_w)
        if source == "anatomy":
            if anatomy is None:  # nothing to bound the edit by: say so, edit freely
                info.setdefault("note", "no known finding named")
                info["note"] += "; unrestricted"
                return None, None, info
            # cells mostly inside the soft prior; dilation then adds the ring a local edit spreads into
            return dilate(anatomy > 0.5, opts.dilate), anatomy, info
        if relevance is None:
            raise ProgEmuError(f"item {item.id!r}: region 'auto' needs a guidance map (guidance kl or nll)")
        info["tau"] = opts.tau
        mask = auto_edit_mask(relevance, opts.tau, anatomy)
        return (dilate(mask, opts.dilate) if opts.tau > 0 else mask), anatomy, info

    # ---- the job ------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def __call__(self, items: list[GenerationItem], options: PipelineOptions | None = None) -> list[GenerationResult]:
        """Generate ``options.num_samples`` results per item, all items in one batch."""
        opts = options or PipelineOptions()
        proc, lay, n = self.processor, self.layout, len(items)
        t0 = time.perf_counter()
        needs_prior = opts.mode != "report2image"
        priors = [self.load_prior(it.image) for it in items] if needs_prior else [None] * n
        for it in items:
            if opts.mode != "image2report" and not (it.prompt or "").strip():
                raise ProgEmuError(f"item {it.id!r}: empty prompt")
        # one image at a time through the VQ: an item's codes and pixels then never depend on its batch neighbours
        codes = (torch.cat([encode_images(self.model, proc, [p]) for p in priors])
                 if needs_prior else None)  # (B, h, w)
        # (scores, warning, the prior decoded from its own codes): the change map compares the output against it
        fidelity = [self.prior_fidelity(priors[i], codes[i]) for i in range(n)] if needs_prior else [None] * n
        t_load = time.perf_counter() - t0
        task = {"counterfactual": opts.task, "report2image": "report2image", "image2report": "image2report"}[opts.mode]
        prompts = [proc.build_generation_prompt(task, prior_codes=None if codes is None else codes[i],
                                                prompt=it.prompt) for i, it in enumerate(items)]
        # the same prior without the prompt: the guidance map's reference and the "prior" CFG branch
        no_prompt = ([proc.build_generation_prompt(task, prior_codes=codes[i], prompt="") for i in range(n)]
                     if opts.mode == "counterfactual" else None)
        nulls = no_prompt if opts.cfg_null == "prior" else [
            proc.build_generation_prompt(task, unconditional=True) for _ in items]
        prior_nulls = no_prompt if opts.cfg_null == "both" else None
        relevance = masks = None
        regions: list[dict] = [{} for _ in items]
        guid_grids: list[torch.Tensor | None] = [None] * n
        t1 = time.perf_counter()
        if opts.mode == "counterfactual":
            if opts.guidance != "none":
                relevance = relevance_grid(self.model, lay, prompts, codes, no_prompt, method=opts.guidance)
            masks = []
            for i, it in enumerate(items):
                mask, anatomy, regions[i] = self.region_mask(it, opts, priors[i].shape,
                                                             None if relevance is None else relevance[i])
                masks.append(mask)
                if relevance is not None:  # G = R x anatomical prior (InstructX2X); none where nothing is to change
                    no_change = it.mask is None and not it.region and asks_no_change(it.prompt)
                    guid_grids[i] = relevance[i] * (0.0 if no_change else anatomy if anatomy is not None else 1.0)
        t_guid = time.perf_counter() - t1
        k = opts.num_samples
        rep = [i for i in range(n) for _ in range(k)]  # item index of every row
        seeds = [item_seed(opts.seed, items[i].id, s) for i in range(n) for s in range(k)]
        edit_mask = prior = None
        if masks is not None and any(m is not None for m in masks):
            full = torch.ones(lay.grid_h, lay.grid_w, dtype=torch.bool)
            edit_mask = torch.stack([masks[i] if masks[i] is not None else full for i in rep])
            prior = codes[rep]

        def by_row(lists: list | None) -> list | None:  # one entry per generated row (an item's k samples)
            return None if lists is None else [lists[i] for i in rep]

        out = self.generator.generate(by_row(prompts), null_prompts=by_row(nulls),
                                      prior_null_prompts=by_row(prior_nulls), prior_codes=prior,
                                      edit_mask=edit_mask, seeds=seeds, generate_image=opts.mode != "image2report",
                                      options=opts.decode)
        images = (np.concatenate([decode_codes(self.model, c[None]) for c in out.codes])
                  if out.codes is not None else None)  # (B*k, H, W)
        changes = [None] * len(rep)  # where the model acted: its decoded codes against the prior's, per row
        if images is not None and needs_prior:
            grid = (lay.grid_h, lay.grid_w)  # both decoded at the tokenizer's size, the map then at the prior's
            changes = [upsample(change_grid(images[row], fidelity[i][2], grid), priors[i].shape)
                       for row, i in enumerate(rep)]
        seconds = {"load": t_load, "guidance": t_guid, **{f"decode_{a}": b for a, b in out.seconds.items()}}
        results = []
        if opts.paste_prior:  # say so where an item has no region to paste outside of (e.g. no known finding named)
            for i in range(n):
                if masks is not None and masks[i] is None:
                    regions[i]["paste_prior"] = "no edit region for this item: nothing pasted"
        if images is not None and edit_mask is not None and opts.paste_prior:
            # the VQ decoder spreads a changed code over about one neighbouring cell: that ring is decoded too
            decoded = edit_mask.cpu() & dilate(out.codes.cpu() != prior.cpu(), PASTE_RING)
            images = [paste_prior(images[row], priors[i], decoded[row]) for row, i in enumerate(rep)]
        for row, i in enumerate(rep):
            # read back as any generated continuation is (the image block, then the text): a malformed one raises
            block = out.image_ids[row].tolist() if out.image_ids is not None else []
            _, text = proc.parse_generation(block + out.text_ids[row], task)
            g = guid_grids[i]
            results.append(GenerationResult(
                id=items[i].id, sample=row % k, seed=seeds[row], text=text,
                image=None if images is None else images[row], codes=None if out.codes is None else out.codes[row],
                prior=priors[i], edit_mask=None if edit_mask is None else edit_mask[row], region=regions[i],
                guidance=changes[row],
                relevance=None if g is None or priors[i] is None else upsample(g, priors[i].shape),
                seconds=seconds, prior_reconstruction=None if fidelity[i] is None else fidelity[i][0],
                warning=None if fidelity[i] is None else fidelity[i][1]))
        return results

    def prior_fidelity(self, prior: np.ndarray,
                       codes: torch.Tensor) -> tuple[dict[str, float], str | None, np.ndarray]:
        """The prior's reconstruction PSNR / SSIM through the tokenizer, the warning they call for (or None), and the
        reconstruction itself at the tokenizer's size (H', W')."""
        recon = decode_codes(self.model, codes[None])[0]
        at_prior = recon
        if recon.shape != prior.shape:  # the scores compare at the prior's size
            t = torch.as_tensor(recon, dtype=torch.float32)[None, None]
            at_prior = torch.nn.functional.interpolate(t, size=prior.shape, mode="bilinear")[0, 0].numpy()
        scores = reconstruction_scores(prior, at_prior)
        config = getattr(image_tokenizer(self.model), "config", None)
        return scores, unfamiliar(scores, getattr(config, "validation", None)), recon
