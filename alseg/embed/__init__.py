"""Embeddings of candidate patches (a self-supervised MAE, the pixels baseline, nnU-Net features) and the embedding store."""

from alseg.embed.embed import EmbedWorker, embed_patches
from alseg.embed.sources import load_embedder
from alseg.embed.mae import MaskedAutoencoder, build_mae, make_encoder
from alseg.embed.store import EmbeddingStore, StaleEmbeddingsError
from alseg.embed.train import train_mae

__all__ = ["EmbedWorker", "EmbeddingStore", "MaskedAutoencoder", "StaleEmbeddingsError", "build_mae", "embed_patches",
           "load_embedder", "make_encoder", "train_mae"]
