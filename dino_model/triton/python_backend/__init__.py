"""Files Triton's Python-backend stub runs from a version folder, each importing no project code.

A package only so that `preprocessing` is importable by the client (dino_model/serving/images.py),
which must compute exactly what the server's image entry point computes; the model files
(`model.py`, `preprocess_model.py`, `drift_model.py`) are copied into version folders and imported
there by the stub, never from here.
"""
