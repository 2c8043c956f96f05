"""The command line and the jobs built from the wings: the wiring of model -> explainer ->
refine run, the demo and the multi-seed replication.
"""
