"""The recipe and the demo: the bundled digits, the demo CNN, contrastive pre-training then
fine-tuning, a test video, and ``edgewise demo`` end to end (which uses both ``compile`` and
``fleet``; neither of them imports this package)."""
