"""3D Gaussian scenes (3DGS, Kerbl et al. 2023): the model and its PLY files, cameras and scene readers,
differentiable rendering (pure-PyTorch reference rasterizer or gsplat on CUDA) and fitting."""
from .cameras import (Camera, CameraError, load_camera_images, read_blender_scene, read_scene_cameras,
                      split_views, write_scene_cameras)
from .fit import DensifyConfig, FitError, FitHistory, evaluate_psnr, fit_gaussians
from .model import GaussianError, GaussianModel, load_ply, save_ply
from .render import RenderError, RenderOutput, render

__all__ = [
    "Camera", "CameraError", "DensifyConfig", "FitError", "FitHistory", "GaussianError", "GaussianModel",
    "RenderError", "RenderOutput", "evaluate_psnr", "fit_gaussians", "load_camera_images", "load_ply",
    "read_blender_scene", "read_scene_cameras", "render", "save_ply", "split_views", "write_scene_cameras",
]
