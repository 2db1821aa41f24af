"""Recommendation: priors from published laws, learned surfaces, the PFN, refinement.

Knows nothing of protos or gRPC; heavy libraries (torch, lightgbm) are imported where used.
"""
