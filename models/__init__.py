"""Torch modules of the WCT encoder/decoder family and their weights. No Ray in here."""

from models.checkpoint import WeightsError
from models.family import CD16X, LEVELS, VGG19, Decoder, Encoder, FamilySpec
from models.receptive import decoder_halo, encoder_halo, level_halo
from models.weights import CD16xWeights, WeightSet, WeightSpec, resolve_weights, small_decoder, small_encoder

__all__ = [
    "CD16X",
    "LEVELS",
    "VGG19",
    "CD16xWeights",
    "Decoder",
    "Encoder",
    "FamilySpec",
    "WeightSet",
    "WeightSpec",
    "WeightsError",
    "decoder_halo",
    "encoder_halo",
    "level_halo",
    "resolve_weights",
    "small_decoder",
    "small_encoder",
]
