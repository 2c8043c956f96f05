"""The jobs: the wiring of model, explainer, loop, store and reports into the runs the command
line starts (refine, froc, explain, demo, replicate), one module per job.
"""
