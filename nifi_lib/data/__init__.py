"""Datasets: benchmark downloads (registry, download, extract), scene readers (COLMAP, nerfstudio/DL3DV,
Blender, embedded), DL3DV ingest, and per-scene prompts (Qwen2.5-VL captions).

Submodules are imported on use (``from nifi_lib.data.scenes import load_scene``) so that
``import nifi_lib.data`` stays light.
"""
