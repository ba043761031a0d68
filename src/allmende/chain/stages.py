"""Stages on chain, with no contract of their own.

A stage is registered as a model derived from its base (`Models.register_derived`), its
stage id the keccak256 of its descriptor and the descriptor its metadata URI
(`allmende.core.stages`). So a stage pays the base model's royalty to the base's owner on
every redeemed amount, is offered in the Registry like any model id (price per token), and
anyone checks a registration by re-hashing its URI.

`registered_stages` reads them back for one base model: by default only those its owner
registered (the owner's layout is the model's; anyone else's descriptor may name a slice
hash no honest provider can serve), each checked against its id. `covering_layouts` finds
the chains of registered stages that cover the whole model, stages of different splits
mixed where their block ranges meet.
"""

from __future__ import annotations

from dataclasses import dataclass

from allmende.chain.bindings import Contracts
from allmende.core.errors import UnknownModel
from allmende.core.stages import STAGE_SCHEME, InvalidStage, StageLayout, StageSpec, parse_descriptor

MAX_LAYOUTS = 64  # covering chains returned at most


def register_layout(contracts: Contracts, layout: StageLayout, license: str) -> list[bytes]:
    """Register every stage of `layout` not registered yet, derived from its base (which must
    be registered); the caller becomes the stages' owner. Returns the ids it registered."""
    if contracts.models.owner_of(layout.base) is None:
        raise UnknownModel(f"base model 0x{layout.base.hex()} is not registered")
    done = []
    for spec in layout.stages:
        if contracts.models.owner_of(spec.stage_id) is None:
            contracts.models.register_derived(spec.stage_id, layout.base, license, [], spec.descriptor)
            done.append(spec.stage_id)
    return done


def registered_stages(contracts: Contracts, base: bytes, only_owner: bool = True) -> list[StageSpec]:
    """Every stage of `base` registered on chain whose descriptor hashes to its id."""
    owner = contracts.models.owner_of(base)
    if owner is None:
        raise UnknownModel(f"model 0x{base.hex()} is not registered")
    found = []
    for model_id in contracts.models.all_ids():
        record = contracts.models.get(model_id)
        if record.parents != [base] or not record.metadata_uri.startswith(STAGE_SCHEME):
            continue
        if only_owner and record.owner.lower() != owner.lower():
            continue
        try:
            spec = parse_descriptor(record.metadata_uri, model_id)
        except InvalidStage:
            continue  # a registration that claims a stage it does not hash to
        if spec.base == base:
            found.append(spec)
    return found


def covering_layouts(stages: list[StageSpec]) -> list[StageLayout]:
    """The chains of `stages` that cover every block from 0 to the last, shortest first."""
    if not stages:
        return []
    by_start: dict[int, list[StageSpec]] = {}
    for spec in stages:
        by_start.setdefault(spec.range.start, []).append(spec)
    layouts: list[StageLayout] = []

    def extend(chain: list[StageSpec]) -> None:
        if len(layouts) >= MAX_LAYOUTS:
            return
        at = chain[-1].range.end if chain else 0
        if chain and chain[-1].range.heads:
            layouts.append(StageLayout(tuple(chain)))
            return
        for spec in by_start.get(at, []):
            if not chain or spec.range.n_blocks == chain[0].range.n_blocks:
                extend([*chain, spec])

    extend([])
    return sorted(layouts, key=len)


@dataclass(frozen=True)
class StageProvider:
    """A provider's on-chain offer of a stage: where it serves and its price per token."""

    stage: StageSpec
    provider: str
    endpoint: str
    price_in: int  # per input position
    price_out: int  # per token drawn (the last stage) or per output position


def stage_providers(contracts: Contracts, layout: StageLayout) -> list[StageProvider]:
    """Every active provider offering a stage of `layout`, with its endpoint and prices."""
    out = []
    for spec in layout.stages:
        for provider in contracts.registry.providers_of(spec.stage_id):
            offer = contracts.registry.offer(provider, spec.stage_id)
            if offer.active:
                endpoint = contracts.registry.account(provider).endpoint
                out.append(StageProvider(spec, provider, endpoint, offer.price_in, offer.price_out))
    return out
