"""Self-supervised MAE embeddings of candidate patches and the embedding store."""

from alseg.embed.embed import EmbedWorker, embed_patches, load_mae
from alseg.embed.mae import MaskedAutoencoder, build_mae, make_encoder
from alseg.embed.store import EmbeddingStore, StaleEmbeddingsError
from alseg.embed.train import train_mae

__all__ = ["EmbedWorker", "EmbeddingStore", "MaskedAutoencoder", "StaleEmbeddingsError", "build_mae", "embed_patches",
           "load_mae", "make_encoder", "train_mae"]
