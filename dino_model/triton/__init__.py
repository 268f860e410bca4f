"""The Triton model repository: the folder layout, `config.pbtxt` and the Python backend that Triton loads.

Its own package because only serving and the command line use it: export writes the ONNX file
and its lineage, this package turns them into versions Triton can load, and serving starts,
loads and promotes them.
"""
