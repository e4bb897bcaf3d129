"""Networks and ops shared by several detectors: conv blocks, the U-Nets, fast conv/upsample/pool.

A network used by one detector alone lives in that detector's folder instead.
"""
