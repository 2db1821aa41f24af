"""The PFN predictor: a small transformer trained on loss landscapes sampled from our prior
(prior.py), which predicts the loss distribution at query configurations from context runs in
one forward pass. See docs/pfn.md.

Importing this package does not import torch: model.py, bar.py, checkpoint.py and train.py
do, and predictor.py imports them only when a model is first needed.
"""
