"""Naming a model on chain (`Models.set_name`) as the node that owns it: the provider names
the models it registered, and `allmende up`'s deployer names the chat model it splits into
stages. Here, in the chain layer, so that both reach it without one role importing another."""

from __future__ import annotations

import logging

from allmende.chain.bindings import Contracts
from allmende.chain.errors import ChainError
from allmende.core.errors import InvalidModelName
from allmende.core.model_names import canonical_name

log = logging.getLogger("allmende.chain.names")


def name_model(contracts: Contracts, model_id: bytes, loaded_as: str) -> str | None:
    """Give a model this node owns the name it was loaded as; None (and a log line saying how
    it is asked for instead) when that is no name or another model holds it."""
    try:
        name = canonical_name(loaded_as)
    except InvalidModelName as exc:
        log.info("model 0x%s has no name on chain (%s); it is asked for by its id", model_id.hex(), exc)
        return None
    holder = contracts.models.model_by_name(name)
    if holder is not None and holder != model_id:
        log.warning(
            "the name %r belongs to model 0x%s; 0x%s is asked for by its id", name, holder.hex(), model_id.hex()
        )
        return None
    try:
        contracts.models.set_name(model_id, name)
    except ChainError as exc:  # a look-alike of the name is taken
        log.warning("model 0x%s not named %r: %s; it is asked for by its id", model_id.hex(), name, exc)
        return None
    log.info("named model 0x%s %r", model_id.hex(), name)
    return name
