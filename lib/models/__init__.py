"""Model families, one file each (`transformer.py`): flax.linen modules with logical axis names.

May import: lib.config. Not lib.flops (it counts for the families, so it sits above them).
"""
