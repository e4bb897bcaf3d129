"""Hidden-art extraction: the second family of xray_flax (ArtExtract, docs/papers.md).

Compares a painting's visible RGB image with its multispectral bands to find what lies under the
visible surface: readers for multispectral layouts, simulated multispectral paintings with a
known hidden layer, per-band dissimilarity methods, and GCN/GAT Siamese networks on superpixel
graphs.
"""
