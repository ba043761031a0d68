"""Data custody: the vault node (compute-to-data) and federated training.

A vault holds a data owner's datasets and runs job templates next to them: evaluate
a model, a federated training round (a clipped update trained with differential
privacy), aggregate statistics with a minimum group size. Nothing else runs and no
row leaves. Every job is checked against its grant on chain and logged there.
"""
