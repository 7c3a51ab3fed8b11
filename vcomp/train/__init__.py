"""vcomp.train: the procedural video world (`synthetic`) the embedded model is trained on.

    >>> from vcomp.train.synthetic import WorldDataset, sample_scene, render, caption
"""
