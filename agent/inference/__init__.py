"""The frame path: ONNX Runtime sessions, postprocessing, the capture and inference threads."""
