"""Stored augmented views (issue 11): augmentation as data, and the per-row view plan.

    draws.py     counter-based random numbers: pure functions of (seed, row, view, ...)
    augment.py   the ops: params per (row, view), apply(images, params)
    grammar.py   the --augment text -> an Augmentation
    expand.py    generate's side: a batch of rows -> its V views and their params
    (train/views.py is the trainer's side: which stored view a row trains on in an epoch, and its replay)

See docs/vision.md.
"""
