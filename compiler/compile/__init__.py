"""The compile path: load a model, prune and recover it, export, quantize within the accuracy
budget, measure every stage, and sign a package with its report and golden inputs.

Nothing here imports ``compiler.recipe`` or ``compiler.fleet``: compiling needs neither.
"""
