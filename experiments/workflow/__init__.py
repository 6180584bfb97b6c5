"""The stages of an experiment, as functions over typed options (see ../shared DESIGN "Rooms"):
experiments/cli.py is the only module that knows argparse; each stage lives here in its own module.

    lr_edges     after a sweep with an lr grid: one more run past the edge of each point whose best lr sits there
"""
