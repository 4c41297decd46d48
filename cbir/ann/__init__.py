"""FAISS index types, HNSW seed nodes, re-ranking maths."""
